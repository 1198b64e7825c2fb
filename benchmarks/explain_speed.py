"""Speed of explanations: UniCAM vs Grad-CAM per batch, and ROAD imputation vs pytorch_grad_cam's.

Fashion-MNIST, 64 test images (28x28), resnet8 student vs resnet8 base at the last stage
(``layer3``). Timings are medians over ``--repeats`` runs (CPU time of the process on CPU, wall
time on CUDA), the compared calls interleaved so that load on the machine hits them alike.
ROAD: half the pixels of each image removed, ranked by the student's Grad-CAM (the masks FSS/RS
use), 64 images at once for kdscope against ``pytorch_grad_cam.metrics.road.NoisyLinearImputer``
called per image (as its ROAD metrics do).

    .venv/bin/python benchmarks/explain_speed.py [--device cuda] [--threads 1] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from pytorch_grad_cam.metrics.road import NoisyLinearImputer

from kdscope.data.fashion_mnist import DEBIAN_DIR, MEAN, STD, read_idx
from kdscope.explain import grad_cam, road_impute, unicam
from kdscope.explain.road import top_pixels
from kdscope.models import create_model


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
    for fn in fns.values():  # warm-up
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    raw = read_idx(DEBIAN_DIR / "t10k-images-idx3-ubyte.gz")[:64]
    labels = torch.from_numpy(read_idx(DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz")[:64].copy())
    images = torch.from_numpy(raw.copy()).float().div(255).unsqueeze(1)
    inputs = ((images - MEAN[0]) / STD[0]).to(device)
    torch.manual_seed(0)
    student = create_model("resnet8", 10, 1).to(device).eval()
    base = create_model("resnet8", 10, 1).to(device).eval()
    embeddings = torch.randn(10, 384, device=device)

    cams = compare(
        {
            "grad_cam": lambda: grad_cam(student, "layer3", inputs),
            "unicam": lambda: unicam(student, base, "layer3", inputs, labels, embeddings),
        },
        args.repeats,
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
        imputation = compare(road, max(3, args.repeats // 3), device)

    clock = "wall time" if device.type == "cuda" else "process CPU time"
    print(f"device {device}, {args.threads} CPU thread(s), {clock}, medians of {args.repeats} runs")
    print("| batch of 64, Fashion-MNIST 28x28 | median ms | ratio |")
    print("|---|---|---|")
    print(f"| Grad-CAM, student layer3 | {1e3 * cams['grad_cam']:.1f} | 1.00 |")
    ratio = cams["unicam"] / cams["grad_cam"]
    print(f"| UniCAM (distilled + residual), layer3 | {1e3 * cams['unicam']:.1f} | {ratio:.2f} |")
    ref = imputation["pytorch_grad_cam"]
    for name in ("pytorch_grad_cam", "kdscope_direct", "kdscope_cg"):
        label = f"ROAD imputation, half removed: {name.replace('_', ' ', 1)}"
        t = imputation[name]
        print(f"| {label} | {1e3 * t:.1f} | {t / ref:.3f} of pytorch_grad_cam |")


if __name__ == "__main__":
    main()
