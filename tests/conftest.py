import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    from kdscope.data import load_data

    return load_data("digits", train_size=256)
