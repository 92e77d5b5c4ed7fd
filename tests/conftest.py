
import pytest
import torch

# Tests run on 2 cores next to each other (xdist): one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "store")
