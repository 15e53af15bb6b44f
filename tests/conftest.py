"""Shared fixtures. Ray is real: one local instance per test session (start-up costs ~7 s)."""

from __future__ import annotations

import copy
import os

import pytest

from service.spec import SweepSpec

# A tiny but real study: digits (scikit-learn's bundled 8×8 images), small CNN, 2 epochs.
BASE_SPEC = {
    "name": "test-sweep",
    "seed": 0,
    "data": {"name": "digits", "val_fraction": 0.2},
    "model": {"name": "cnn", "num_conv_layers": 1, "filters": 8, "num_fc_layers": 1},
    "train": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "adam", "lr": 3.0e-3}, "amp": "off"},
    "search": {"algorithm": "grid"},
    "scheduler": {"name": "fifo"},
    "objective": {"metric": "val_acc", "mode": "max"},
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
}


def deep_update(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def make_spec(tmp_path):
    """make_spec(name=..., model={...}) → a SweepSpec storing under this test's tmp dir."""

    def make(**changes) -> SweepSpec:
        data = deep_update(BASE_SPEC, {"storage": {"uri": str(tmp_path / "runs")}, **changes})
        return SweepSpec.model_validate(data)

    return make


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance shared by every test that runs sweeps."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _one_thread_per_test_process():
    # Tests run trials in Ray workers; keep the test process itself from hogging both cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield
