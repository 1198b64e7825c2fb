"""Speed and memory of kdscope.metrics against reference implementations, measured side by side.

    .venv/bin/python benchmarks/metrics_speed.py            # all four parts
    .venv/bin/python benchmarks/metrics_speed.py --part dcor --part cka
    .venv/bin/python benchmarks/metrics_speed.py --part linear --rounds 3
    .venv/bin/python benchmarks/metrics_speed.py --part evaluator --images 2048

Parts:
  dcor       dCor, R* and pdCor at n in {256, 1024, 4096}, d = 512, float64, against dcor.
  cka        linear CKA at n = 50,000, d = 512, streamed in batches of 1,000: peak memory (RSS above
             the process's baseline after imports, each method in its own process) and time of the
             method's calls (not the making of the batches), against pytorch-cka's streamed
             minibatch HSIC (cka.hsic.hsic on per-batch Gram matrices, what its CKA class does for
             each batch; ``pip install --no-deps pytorch-cka``, left out when not installed).
             Every method runs once per round, in a fresh process.
  linear     linear CKA of n = 10,000, d = 512 in one piece, biased and debiased, against torch-cka
             (``pip install --no-deps torch-cka``) and ckatorch (``pip install ckatorch``), values
             compared; rounds interleave the implementations. torch-cka's O(n^3) trace(K @ L)
             takes minutes per round.
  evaluator  Evaluator (agreement + KRS, 4 layer pairs) on the Fashion-MNIST test set, teacher
             resnet56, student resnet8 (untrained), against the two models' forward passes alone.
Times are CPU seconds of the benchmark process (``time.process_time``) with one torch thread
unless ``--threads`` says otherwise; dcor's numpy/scipy code runs on one thread as well.
Prints Markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

# numpy/scipy (dcor) on one thread; idle BLAS threads that spin would bill their CPU time to
# whatever is timed next. Must be set before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import torch  # noqa: E402

N_CKA, D_CKA, BATCH_CKA = 50_000, 512, 1_000
N_LINEAR = 10_000


def _best_time(fn, repeats: int, warm_up: bool = True) -> tuple[float, object]:
    """Smallest CPU time of ``repeats`` calls, and the value returned.

    CPU time of the calling thread (torch and numpy on one thread by default), with the garbage
    collector off as in ``timeit``: the machine this ran on is shared, and wall time there
    measures the neighbours as much as the code.
    """
    if warm_up:
        fn()  # untimed: first calls pay for page faults and lazy initialisation
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.thread_time()
            value = fn()
            best = min(best, time.thread_time() - start)
    finally:
        gc.enable()
    return best, value


def bench_dcor(sizes: list[int]) -> None:
    """kdscope against dcor as installed and against dcor with its scipy distance path.

    dcor 0.7 with array_api_compat routes numpy input to its naive distance code, which builds an
    n x n x d difference array (4 GiB at n = 1,024, 64 GiB at n = 4,096); its scipy ``cdist`` path
    is what its docstring intends for float64 input, so both are timed.
    """
    import dcor
    import dcor.distances
    import numpy as np

    from kdscope.metrics import dcor as dc

    shipped = dcor.distances._can_be_numpy_double

    def with_scipy(fn):
        def call(*args):
            dcor.distances._can_be_numpy_double = lambda x: isinstance(x, np.ndarray)
            try:
                return fn(*args)
            finally:
                dcor.distances._can_be_numpy_double = shipped

        return call

    print(
        "| function | n | kdscope (s) | dcor + scipy cdist (s) | speed-up | dcor as installed (s) "
        "| speed-up | max abs. difference |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        x = torch.randn(n, 512, generator=g, dtype=torch.float64)
        y = torch.tanh(x @ torch.randn(512, 512, generator=g, dtype=torch.float64) / 20)
        y = y + torch.randn(n, 512, generator=g, dtype=torch.float64)
        z = x[:, :256] ** 2 + torch.randn(n, 256, generator=g, dtype=torch.float64)
        xn, yn, zn = x.numpy(), y.numpy(), z.numpy()
        repeats = 3 if n <= 1024 else 1
        naive_gib = n * n * 512 * 8 / 2**30
        cases = [
            ("distance_correlation", (x, y), (xn, yn)),
            ("u_distance_correlation_sqr", (x, y), (xn, yn)),
            ("partial_distance_correlation", (x, y, z), (xn, yn, zn)),
        ]
        for name, ours_args, ref_args in cases:
            ours, ref = getattr(dc, name), getattr(dcor, name)
            t_ours, v_ours = _best_time(lambda f=ours, a=ours_args: f(*a).item(), repeats)
            t_sci, v_sci = _best_time(lambda f=with_scipy(ref), a=ref_args: float(f(*a)), repeats)
            diff = abs(v_ours - v_sci)
            if naive_gib <= 8:
                t_raw, v_raw = _best_time(lambda f=ref, a=ref_args: float(f(*a)), repeats)
                raw = f"{t_raw:.3f} | {t_raw / t_ours:.1f}x"
                diff = max(diff, abs(v_ours - v_raw))
            else:
                raw = f"not run: needs a {naive_gib:.0f} GiB array | -"
            print(
                f"| {name} | {n} | {t_ours:.3f} | {t_sci:.3f} | {t_sci / t_ours:.1f}x | {raw} "
                f"| {diff:.1e} |",
                flush=True,
            )


def _cka_batches():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D_CKA, D_CKA, generator=g) / D_CKA**0.5
    for _ in range(N_CKA // BATCH_CKA):
        x = torch.randn(BATCH_CKA, D_CKA, generator=g)
        yield x, torch.relu(x @ w + 0.5 * torch.randn(BATCH_CKA, D_CKA, generator=g))


def _cka_method(method: str):
    """(update, compute) of one streamed CKA method."""
    from kdscope.metrics import MinibatchCKA, StreamingLinearCKA

    if method != "pytorch-cka":
        acc = StreamingLinearCKA() if method == "kdscope-streaming" else MinibatchCKA()
        return acc.update, acc.compute
    from cka.hsic import hsic

    sums = torch.zeros(3)

    def update(x, y):
        kx, ky = (x @ x.T)[None], (y @ y.T)[None]  # as CKA._accumulate_hsic: float32, uncentred
        xy, xx, yy = hsic(kx, ky)
        sums.add_(torch.stack([xy.sum(), xx.sum(), yy.sum()]))

    return update, lambda: (sums[0] / (sums[1] * sums[2]).sqrt()).item()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def cka_worker(method: str) -> dict:
    """Run one streamed CKA method in this process; report time and peak RSS above baseline.

    The time is the thread's CPU time in the method's ``update`` and ``compute`` calls; making the
    synthetic batches (a 1,000 x 512 x 512 product each) is left out.

    Linux only: the peak-RSS mark (VmHWM) is reset through /proc/self/clear_refs after imports
    and a warm-up batch (getrusage's ru_maxrss would carry the parent's peak over exec).
    """
    x, y = next(_cka_batches())
    _cka_method(method)[0](x, y)  # first-call allocations belong to the baseline
    update, compute = _cka_method(method)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    baseline = _status_kb("VmRSS")
    seconds = 0.0
    for x, y in _cka_batches():
        start = time.thread_time()  # the method's calls only, not the making of the data
        update(x, y)
        seconds += time.thread_time() - start
    start = time.thread_time()
    value = compute()
    seconds += time.thread_time() - start
    peak = _status_kb("VmHWM")
    return {
        "method": method,
        "seconds": seconds,
        "value": value,
        "peak_mb": (peak - baseline) / 1024,
        "rss_mb": peak / 1024,
    }


def bench_cka(threads: int, rounds: int) -> None:
    """Each method in its own process, once per round, the order rotated from round to round."""
    notes = {
        "kdscope-streaming": "biased CKA on all 50,000 (feature space, float64)",
        "kdscope-minibatch": "minibatch debiased CKA (Nguyen et al.); centred float32 features, "
        "HSIC_1 from d x d products",
        "pytorch-cka": "minibatch debiased CKA, float32 uncentred Grams",
    }
    if importlib.util.find_spec("cka") is None:
        del notes["pytorch-cka"]
        print("pytorch-cka is not installed (pip install --no-deps pytorch-cka): row left out")
    methods = list(notes)
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(rounds):
        for method in methods[r % len(methods) :] + methods[: r % len(methods)]:
            out = subprocess.run(
                [sys.executable, __file__, "--cka-worker", method, "--threads", str(threads)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            runs[method].append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"| method | estimator | time (s), median of {rounds} | min-max (s) "
        "| peak memory above baseline (MB) | peak RSS (MB) | CKA |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, note in notes.items():
        seconds = [r["seconds"] for r in runs[method]]
        last = runs[method][-1]
        print(
            f"| {method} | {note} | {statistics.median(seconds):.2f} "
            f"| {min(seconds):.2f}-{max(seconds):.2f} "
            f"| {statistics.median(r['peak_mb'] for r in runs[method]):.1f} "
            f"| {last['rss_mb']:.0f} | {last['value']:.6f} |",
            flush=True,
        )
    if "pytorch-cka" in runs:
        ratios = [
            theirs["seconds"] / ours["seconds"]
            for ours, theirs in zip(runs["kdscope-minibatch"], runs["pytorch-cka"], strict=True)
        ]
        shown = ", ".join(f"{q:.2f}" for q in ratios)
        print(f"\npytorch-cka / kdscope-minibatch time, per round: {shown}")


def _linear_data() -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(_cka_batches())[: N_LINEAR // BATCH_CKA]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def bench_linear(rounds: int) -> None:
    """Linear CKA on all n = 10,000 at once: kdscope against torch-cka and ckatorch, side by side.

    torch-cka 0.21 has no function for two feature matrices: its ``CKA.compare`` runs
    ``CKA._HSIC`` on the float32 Grams of each batch with their diagonals zeroed, which is what is
    timed here, with the whole set as one batch (so its minibatch CKA is the debiased CKA).
    ckatorch 1.0.3's ``cka_base`` computes in float64 on n x n Grams; its ``unbiased=True`` is
    Kornblith et al.'s debiased CKA (U-centred Grams).
    """
    from kdscope.metrics.similarity import linear_cka

    x, y = _linear_data()
    methods = {
        "kdscope `linear_cka`": (
            "biased; feature space, float64",
            "biased",
            lambda: linear_cka(x, y).item(),
        ),
        "kdscope `linear_cka(debiased=True)`": (
            "debiased (HSIC_1); feature space, float64",
            "debiased",
            lambda: linear_cka(x, y, debiased=True).item(),
        ),
    }
    if importlib.util.find_spec("ckatorch") is not None:
        from ckatorch import cka_base

        methods["ckatorch `cka_base`"] = (
            "biased; n x n Grams, float64",
            "biased",
            lambda: cka_base(x, y).item(),
        )
        methods["ckatorch `cka_base(unbiased=True)`"] = (
            "debiased (U-centred Grams); float64",
            "debiased",
            lambda: cka_base(x, y, unbiased=True).item(),
        )
    else:
        print("ckatorch is not installed (pip install ckatorch): rows left out")
    if importlib.util.find_spec("torch_cka") is not None:
        methods["torch-cka `CKA._HSIC`"] = (
            "debiased (HSIC_1, trace(K @ L)); uncentred float32 Grams",
            "debiased",
            _torch_cka(x, y),
        )
    else:
        print("torch-cka is not installed (pip install --no-deps torch-cka): row left out")
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    values: dict[str, float] = {}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            start = time.thread_time()
            values[name] = methods[name][2]()
            times[name].append(time.thread_time() - start)
    reference = {kind: values[name] for name, (_, kind, _) in list(methods.items())[:2]}
    print(
        f"Linear CKA, n = {len(x):,}, d = {x.shape[1]}, y = ReLU(xW + noise); median CPU time "
        f"of {rounds} round(s)\n"
    )
    print("| implementation | estimator | time (s) | min-max (s) | CKA | minus kdscope's |")
    print("|---|---|---|---|---|---|")
    for name, (note, kind, _) in methods.items():
        t = times[name]
        print(
            f"| {name} | {note} | {statistics.median(t):.2f} | {min(t):.2f}-{max(t):.2f} "
            f"| {values[name]:.10f} | {values[name] - reference[kind]:.1e} |",
            flush=True,
        )


def _torch_cka(x: torch.Tensor, y: torch.Tensor):
    from torch_cka import CKA

    holder = type("Holder", (), {"device": "cpu"})()  # _HSIC reads only self.device

    def run() -> float:
        k, l = x @ x.T, y @ y.T  # noqa: E741
        k.fill_diagonal_(0.0)
        l.fill_diagonal_(0.0)
        kl, kk, ll = (CKA._HSIC(holder, a, b) for a, b in ((k, l), (k, k), (l, l)))
        return kl / (kk * ll) ** 0.5

    return run


def bench_evaluator(images: int, data_dir: str, rounds: int) -> None:
    """Forward passes alone and the Evaluator, interleaved for ``rounds``; per-round ratios."""
    from torch.utils.data import DataLoader, Subset

    from kdscope.data import collate, load_data
    from kdscope.metrics import evaluate
    from kdscope.models import create_model

    test = load_data("fashion-mnist", data_dir=data_dir).test
    data = test if images >= len(test) else Subset(test, range(images))
    loader = DataLoader(data, batch_size=256, collate_fn=collate)
    torch.manual_seed(0)
    teacher = create_model("resnet56", 10, 1).eval()
    student = create_model("resnet8", 10, 1).eval()
    layers = [(name, name) for name in ("layer1", "layer2", "layer3", "avgpool")]

    def forward_only():
        with torch.no_grad():
            for x, *_ in loader:
                teacher(x)
                student(x)

    print("| round | images | forward passes (s) | Evaluator (s) | ratio | KRS (untrained) |")
    print("|---|---|---|---|---|---|")
    for r in range(rounds):
        t_forward, _ = _best_time(forward_only, 1, warm_up=r == 0)
        t_eval, result = _best_time(
            lambda: evaluate(teacher, student, loader, layers=layers), 1, warm_up=r == 0
        )
        print(
            f"| {r + 1} | {result.n} | {t_forward:.1f} | {t_eval:.1f} | {t_eval / t_forward:.2f} "
            f"| {result.krs['student'].krs:.4f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", action="append", choices=["dcor", "cka", "linear", "evaluator"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the cka, linear and evaluator parts"
    )
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: numpy/scipy in dcor use one)"
    )
    parser.add_argument("--cka-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cka_worker:
        print(json.dumps(cka_worker(args.cka_worker)))
        return
    parts = args.part or ["dcor", "cka", "linear", "evaluator"]
    # Not torch.get_num_threads(): calling it before dcor (numba) is imported made every later
    # small torch op ~30x slower in CPU time on the machine these numbers come from.
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    if "dcor" in parts:
        bench_dcor(args.sizes)
    if "cka" in parts:
        print()
        bench_cka(args.threads, args.rounds)
    if "linear" in parts:
        print()
        bench_linear(args.rounds)
    if "evaluator" in parts:
        print()
        bench_evaluator(args.images, args.data_dir, args.rounds)


if __name__ == "__main__":
    main()
