import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import LLAMA_SHAPE, QWEN2_SHAPE, SMALL_LLAMA, save_checkpoint  # noqa: E402


def pytest_configure(config) -> None:
    """Under xdist, each worker (and the nnU-Net processes it starts) computes on one thread: the workers share
    this machine's cores instead of oversubscribing them."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def llama_sharded(tmp_path_factory) -> Path:
    """LLaMA-3.2-1B-shaped checkpoint (hidden 2048), 2 layers, bf16, 3 shards: layer 1 spans shards 2 and 3."""
    return save_checkpoint(tmp_path_factory.mktemp("llama") / "model", "llama", 2, LLAMA_SHAPE,
                           max_shard_size="100MB")


@pytest.fixture(scope="session")
def qwen2_sharded(tmp_path_factory) -> Path:
    """Qwen2-1.5B-shaped checkpoint (hidden 1536, q/k/v biases), 2 layers, bf16, sharded."""
    return save_checkpoint(tmp_path_factory.mktemp("qwen2") / "model", "qwen2", 2, QWEN2_SHAPE,
                           max_shard_size="80MB")


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """A small LLaMA-family checkpoint (hidden 64), 2 layers, bf16, one safetensors file."""
    return save_checkpoint(tmp_path_factory.mktemp("small") / "model", "llama", 2, SMALL_LLAMA)
