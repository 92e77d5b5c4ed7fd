import random

import numpy as np
import pytest
import torch

# Tests run on 2 cores next to each other (xdist): one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same RNG state, whatever ran before it on its worker."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "store")
