import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# One thread: tests also start subprocesses (DDP, CLI), and OpenMP threads that outnumber free
# cores spin instead of working.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    from kdscope.data import load_data

    return load_data("digits", train_size=256)


@pytest.fixture
def torchrun():
    """``torchrun(*args)`` runs ``torchrun --standalone --nproc_per_node 2 *args`` with one thread
    per process and fails with its output unless it exits 0; skips where torchrun is missing."""
    exe = Path(sys.executable).with_name("torchrun")
    if not exe.exists():
        pytest.skip("torchrun is not installed next to this python")

    def run(*args) -> None:
        cmd = [exe, "--standalone", "--nproc_per_node", "2", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            [str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    return run
