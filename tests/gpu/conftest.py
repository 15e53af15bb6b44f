"""tests/gpu: what only a CUDA GPU can show (mixed precision on cuDNN, the memory guard, packed
trials). Every test here is marked ``gpu`` and skips, saying why, where CUDA is absent (CI, the
development machines); ``make gpu-check`` runs them on a GPU machine (bench/README.md, "GPU")."""

from __future__ import annotations

import os

import pytest
import torch

NO_CUDA = ("no CUDA device: tests/gpu needs one (`make gpu-check` runs them on a GPU machine; "
           "bench/README.md, 'GPU')")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_gpu():
    """A real local Ray instance with the machine's GPU(s) and cores, for the tests that run sweeps."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
