"""Speed of explanations: Grad-CAM vs pytorch_grad_cam, UniCAM vs Grad-CAM, ROAD imputation.

Fashion-MNIST, the first 64 test images (1x28x28), untrained models (``torch.manual_seed(0)``).

1. Grad-CAM on two architectures, torchvision resnet18 (CIFAR stem, ``tv:resnet18``) at ``layer4``
   and the zoo's resnet56 at ``layer3``: kdscope's ``grad_cam`` against
   ``pytorch_grad_cam.GradCAM`` (predicted class, as both default to), beside one forward pass of
   the model without autograd; maps compared (max abs. difference).
2. UniCAM (distilled + residual maps) against Grad-CAM, resnet8 student vs resnet8 base at
   ``layer3``.
3. ROAD: half the pixels of each image removed, ranked by the student's Grad-CAM (the masks FSS/RS
   use), 64 images at once for kdscope against ``pytorch_grad_cam.metrics.road.NoisyLinearImputer``
   called per image (as its ROAD metrics do).

Timings are medians over ``--repeats`` rounds, the compared calls interleaved in every round (their
order rotated from round to round) so that load on a shared machine hits them alike: CPU time of
the process on CPU (torch, OpenCV and BLAS on ``--threads`` threads), wall time on CUDA.

    .venv/bin/python benchmarks/explain_speed.py [--device cuda] [--threads 1] [--repeats 15]
"""

from __future__ import annotations

import os

# numpy's BLAS and OpenCV (pytorch_grad_cam's resize) on one thread unless told otherwise; must be
# set before they are imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import cv2  # noqa: E402
import torch  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.metrics.road import NoisyLinearImputer  # noqa: E402

from kdscope.data.fashion_mnist import DEBIAN_DIR, MEAN, STD, read_idx  # noqa: E402
from kdscope.explain import grad_cam, road_impute, unicam  # noqa: E402
from kdscope.explain.road import top_pixels  # noqa: E402
from kdscope.features import FeatureTap  # noqa: E402
from kdscope.models import create_model  # noqa: E402

GRAD_CAM_MODELS = [("tv:resnet18", "layer4"), ("resnet56", "layer3")]


def timed(fn, device: torch.device) -> float:
    # On CPU, the process's CPU time: other jobs on a shared machine inflate wall time unevenly.
    if device.type != "cuda":
        start = time.process_time()
        fn()
        return time.process_time() - start
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median time of each function over ``repeats`` rounds, one call of each per round."""
    for fn in fns.values():  # warm-up
        fn()
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(fns[name], device))
    return {name: statistics.median(t) for name, t in times.items()}


def bench_grad_cam(inputs: torch.Tensor, repeats: int, device: torch.device) -> None:
    print(
        "| model, layer (map) | forward pass (ms) | kdscope `grad_cam` (ms) "
        "| `pytorch_grad_cam.GradCAM` (ms) | speed-up | kdscope / forward | max abs. difference |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, layer in GRAD_CAM_MODELS:
        torch.manual_seed(0)
        model = create_model(name, 10, 1).to(device).eval()
        reference = GradCAM(model, [model.get_submodule(layer)])
        ours = grad_cam(model, layer, inputs)
        diff = (ours.cpu() - torch.from_numpy(reference(inputs, None))).abs().max().item()
        with torch.no_grad():
            shape = "x".join(map(str, _map_size(model, layer, inputs)))

        def forward(model=model):
            with torch.no_grad():
                model(inputs)

        t = compare(
            {
                "forward": forward,
                "kdscope": lambda model=model, layer=layer: grad_cam(model, layer, inputs),
                "pytorch_grad_cam": lambda reference=reference: reference(inputs, None),
            },
            repeats,
            device,
        )
        print(
            f"| {name}, `{layer}` ({shape}) | {1e3 * t['forward']:.1f} | {1e3 * t['kdscope']:.1f} "
            f"| {1e3 * t['pytorch_grad_cam']:.1f} | {t['pytorch_grad_cam'] / t['kdscope']:.2f}x "
            f"| {t['kdscope'] / t['forward']:.2f} | {diff:.1e} |",
            flush=True,
        )
        reference.activations_and_grads.release()


def _map_size(model: torch.nn.Module, layer: str, inputs: torch.Tensor) -> tuple[int, ...]:
    with FeatureTap(model, [layer], detach=True) as tap:
        model(inputs[:1])
    return tuple(tap[layer].shape[1:])


def bench_unicam_road(
    images: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, repeats: int, device
) -> None:
    torch.manual_seed(0)
    student = create_model("resnet8", 10, 1).to(device).eval()
    base = create_model("resnet8", 10, 1).to(device).eval()
    embeddings = torch.randn(10, 384, device=device)

    cams = compare(
        {
            "grad_cam": lambda: grad_cam(student, "layer3", inputs),
            "unicam": lambda: unicam(student, base, "layer3", inputs, labels, embeddings),
        },
        repeats,
        device,
    )

    keep = top_pixels(grad_cam(student, "layer3", inputs), 0.5, torch.Generator().manual_seed(0))
    on_device = images.to(device)
    keep_device = keep.to(device)
    imputer = NoisyLinearImputer(noise=0.01)

    def theirs():
        for i in range(64):
            imputer(images[i], keep[i].float())

    road = {
        "kdscope_direct": lambda: road_impute(on_device, keep_device, solver="direct"),
        "kdscope_cg": lambda: road_impute(on_device, keep_device, solver="cg"),
        "pytorch_grad_cam": theirs,
    }
    with warnings.catch_warnings():
        # pytorch_grad_cam passes torch tensors to numpy, which warns under numpy 2.
        warnings.simplefilter("ignore", DeprecationWarning)
        imputation = compare(road, max(3, repeats // 3), device)

    print("| batch of 64, Fashion-MNIST 28x28 | median ms | ratio |")
    print("|---|---|---|")
    print(f"| Grad-CAM, resnet8 student layer3 | {1e3 * cams['grad_cam']:.1f} | 1.00 |")
    ratio = cams["unicam"] / cams["grad_cam"]
    print(f"| UniCAM (distilled + residual), layer3 | {1e3 * cams['unicam']:.1f} | {ratio:.2f} |")
    ref = imputation["pytorch_grad_cam"]
    for name in ("pytorch_grad_cam", "kdscope_direct", "kdscope_cg"):
        label = f"ROAD imputation, half removed: {name.replace('_', ' ', 1)}"
        t = imputation[name]
        print(f"| {label} | {1e3 * t:.1f} | {t / ref:.3f} of pytorch_grad_cam |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--part", action="append", choices=["grad-cam", "unicam"], help="default: both"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    device = torch.device(args.device)
    parts = args.part or ["grad-cam", "unicam"]

    raw = read_idx(DEBIAN_DIR / "t10k-images-idx3-ubyte.gz")[:64]
    labels = torch.from_numpy(read_idx(DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz")[:64].copy())
    images = torch.from_numpy(raw.copy()).float().div(255).unsqueeze(1)
    inputs = ((images - MEAN[0]) / STD[0]).to(device)

    clock = "wall time" if device.type == "cuda" else "process CPU time"
    print(f"device {device}, {args.threads} CPU thread(s), {clock}, medians of {args.repeats} runs")
    if "grad-cam" in parts:
        print()
        bench_grad_cam(inputs, args.repeats, device)
    if "unicam" in parts:
        print()
        bench_unicam_road(images, inputs, labels, args.repeats, device)


if __name__ == "__main__":
    main()
