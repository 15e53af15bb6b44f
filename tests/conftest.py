"""Shared fixtures. Ray is real: one local instance per test session (start-up costs ~7 s)."""

from __future__ import annotations

import copy
import os

import pytest

from service.core.spec import SweepSpec

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
    # No exporter on the default port: tests may run beside a real sweep (tests/e2e/test_prometheus.py
    # turns it on with a free port).
    "metrics": {"port": 0},
    # No report at the end of each sweep (2-5 s each on 2 CPUs); the tests about it turn it on.
    "report": {"auto": False},
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
        base = copy.deepcopy(BASE_SPEC)
        if "name" in changes.get("model", {}):  # another model family: replace, don't merge
            base["model"] = {}
        data = deep_update(base, {"storage": {"uri": str(tmp_path / "runs")}, **changes})
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


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 protocol server (moto) on a free localhost port, for the whole session.

    Yields its endpoint URL (http://127.0.0.1:PORT) and sets nothing globally: tests point clients
    at it with monkeypatch (AWS_ENDPOINT_URL, fake credentials, region). Buckets live as long as
    the session, so each test should create its own. Without moto: skip locally, fail in CI.
    """
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("moto[server] is required in CI for the S3 tests: pip install 'moto[server]'")
        pytest.skip("moto[server] is not installed (pip install 'moto[server]')")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def point_aws_at(endpoint: str, monkeypatch, tmp_path) -> None:
    """This test's AWS environment (inherited by the drivers it starts): the S3 server at
    ``endpoint``, dummy credentials, path-style addressing, and no ~/.aws files or profile."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("SWEEP_S3_ADDRESSING_STYLE", "path")


@pytest.fixture(autouse=True)
def _one_thread_per_test_process():
    # Tests run trials in Ray workers; keep the test process itself from hogging both cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield
