import pytest
import torch

# One thread: tests also start subprocesses (DDP, CLI), and OpenMP threads that outnumber free
# cores spin instead of working.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    from kdscope.data import load_data

    return load_data("digits", train_size=256)
