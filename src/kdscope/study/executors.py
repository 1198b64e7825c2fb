"""Where a study's independent tasks run: in this process, in a local process pool, or on Ray.

An executor maps a module-level function over argument tuples and yields ``(index, Outcome)`` as
tasks finish. A task that raises becomes a failed :class:`Outcome` carrying its error, so one bad
run never stops the others; ``KeyboardInterrupt`` is not caught and stops the study (the Trainer
has saved ``last.pt``, so rerunning the study resumes).
"""

from __future__ import annotations

import functools
import os
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

EXECUTORS = ("local", "ray")
ABORT_GRACE_S = 30.0


@dataclass
class Outcome:
    """What one task gave: its return ``value``, or ``error`` (type and message) and traceback."""

    ok: bool
    value: Any = None
    error: str | None = None
    traceback: str | None = None


def call(fn: Callable[..., Any], args: tuple) -> Outcome:
    """Run ``fn(*args)``, turning an exception into a failed :class:`Outcome`."""
    try:
        return Outcome(True, fn(*args))
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        return Outcome(False, error=error, traceback=traceback.format_exc())


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` concurrent tasks: the cores shared out, at least 1.

    More threads than cores makes PyTorch's CPU kernels spin against each other (on a busy
    2-core machine a ResNet-8 step took 2.6 s with 2 threads and 0.17 s with 1).
    """
    return max(1, (os.cpu_count() or 1) // workers)


class Executor(ABC):
    """Runs independent tasks; ``map`` yields ``(index into args_list, Outcome)`` as they finish.

    ``in_process``: tasks run one at a time in this process, so what they print reads whole.
    """

    in_process = False

    @abstractmethod
    def map(
        self, fn: Callable[..., Any], args_list: Sequence[tuple]
    ) -> Iterator[tuple[int, Outcome]]: ...

    def close(self) -> None:  # noqa: B027 (a no-op unless the executor holds workers)
        """Release workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    """One task after another in this process (torch keeps its own thread setting)."""

    in_process = True

    def map(self, fn, args_list):
        for i, args in enumerate(args_list):
            yield i, call(fn, args)


def _result(get: Callable[[], Outcome]) -> Outcome:
    # A worker that died (killed, out of memory) fails its task instead of the whole study.
    try:
        return get()
    except Exception as err:
        return Outcome(False, error=f"worker failed: {type(err).__name__}: {err}")


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class ProcessExecutor(Executor):
    """``workers`` spawned processes, each with ``threads`` torch threads (default: the cores
    shared out by :func:`threads_per_worker`). Workers start on first use and are reused."""

    def __init__(self, workers: int, threads: int | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.threads = threads or threads_per_worker(workers)
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn, args_list):
        if self._pool is None:
            # spawn, not fork: a forked child inherits the parent's OpenMP state and can hang.
            self._pool = ProcessPoolExecutor(
                self.workers, get_context("spawn"), _init_worker, (self.threads,)
            )
        futures = {self._pool.submit(call, fn, args): i for i, args in enumerate(args_list)}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield futures[future], _result(future.result)
        except BaseException:
            self._abort(futures)
            raise

    def _abort(self, futures) -> None:
        """Stop after Ctrl-C: workers that got it too save ``last.pt`` and return within the grace
        period; the rest (signalled through the parent alone, or between runs) are terminated,
        and resume from their last epoch."""
        pool, self._pool = self._pool, None
        for future in futures:
            future.cancel()
        wait(futures, timeout=ABORT_GRACE_S)
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _ray_call(fn: Callable[..., Any], args: tuple, threads: int) -> Outcome:
    _init_worker(threads)
    return call(fn, args)


class RayExecutor(Executor):
    """One Ray task per item, each reserving ``cpus_per_task`` CPUs (and as many torch threads).

    Connects to the running Ray instance if one is initialised, else to ``address`` (default: the
    ``RAY_ADDRESS`` environment variable, or a new local instance). Tasks read and write the study
    directory, so on a cluster it must be on a filesystem every node mounts at the same path.
    """

    def __init__(self, address: str | None = None, cpus_per_task: int = 1):
        try:
            import ray
        except ImportError:
            raise ImportError(
                "the ray executor needs Ray: pip install 'kdscope[ray]' (or pip install ray)"
            ) from None
        if cpus_per_task < 1:
            raise ValueError(f"cpus_per_task must be >= 1, got {cpus_per_task}")
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self.cpus_per_task = cpus_per_task
        self._remote = ray.remote(num_cpus=cpus_per_task)(_ray_call)

    def map(self, fn, args_list):
        ray = self._ray
        cpus = self.cpus_per_task
        refs = {self._remote.remote(fn, args, cpus): i for i, args in enumerate(args_list)}
        pending = list(refs)
        try:
            while pending:
                (ref,), pending = ray.wait(pending, num_returns=1)
                yield refs[ref], _result(functools.partial(ray.get, ref))
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise


def make_executor(name: str = "local", workers: int = 1, address: str | None = None) -> Executor:
    """``local`` (``workers`` > 1: a process pool) or ``ray``; errors name the accepted values."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; accepted: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if name == "ray":
        return RayExecutor(address)
    return ProcessExecutor(workers) if workers > 1 else LocalExecutor()
