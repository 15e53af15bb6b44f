"""Pre-flight (service/core/preflight.py): what would fail once Ray runs is refused before it starts,
every problem at once, in seconds. Local data, download sources (unreachable here: a dead proxy),
S3 against a real moto server, and `sweepctl run` as a user runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import point_aws_at
from service.core import preflight
from service.core.loading import SpecError, parse_spec
from service.core.preflight import PreflightError, data_problems, download_urls, storage_problems
from service.core.spec import data_spec

REPO = Path(__file__).resolve().parents[2]
SWEEPCTL = Path(sys.executable).parent / "sweepctl"
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spec_text(tmp_path: Path, data: dict, **more) -> str:
    spec = {"name": "preflight-test", "data": data, "model": {"name": "cnn"}, "train": {"epochs": 1},
            "storage": {"uri": str(tmp_path / "runs")}, "metrics": {"port": 0}, **more}
    return yaml.safe_dump(spec)


def sweepctl(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    command = [str(SWEEPCTL)] if SWEEPCTL.exists() else [sys.executable, "-m", "service.cli"]
    start = time.monotonic()
    result = subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})})
    return result, time.monotonic() - start


def no_network_env() -> dict:
    """Every HTTP(S) request through a proxy that refuses connections: unreachable, deterministically,
    whether or not this machine has internet (urllib and torchvision both honour these variables)."""
    proxy = f"http://127.0.0.1:{free_port()}"
    return {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
            "NO_PROXY": "", "no_proxy": ""}


# ----------------------------------------------------------------------------- the file layouts
def test_download_urls_match_torchvisions_dataset_classes():
    datasets = pytest.importorskip("torchvision.datasets")
    assert download_urls("mnist") == [m + datasets.MNIST.resources[0][0] for m in datasets.MNIST.mirrors]
    assert download_urls("fashion_mnist") == [m + datasets.FashionMNIST.resources[0][0]
                                              for m in datasets.FashionMNIST.mirrors]
    assert download_urls("cifar10") == [datasets.CIFAR10.url]
    assert download_urls("cifar100") == [datasets.CIFAR100.url]
    # ... and torchvision writes the files our layouts describe
    for cls in (datasets.MNIST, datasets.FashionMNIST):
        assert [name for name, _ in cls.resources] == [f + ".gz" for f in MNIST_FILES]
    for cls, name in ((datasets.CIFAR10, "cifar10"), (datasets.CIFAR100, "cifar100")):
        layout = preflight.CIFAR_LAYOUTS[name]
        assert (cls.filename, cls.base_folder) == (layout["archive"], layout["folder"])
        assert [f for f, _ in cls.train_list] == layout["train"] and cls.test_list[0][0] == layout["test"]


def test_the_readers_use_the_preflights_layouts():
    formats = pytest.importorskip("trainer.data.formats")
    assert formats._CIFAR is preflight.CIFAR_LAYOUTS and formats._MNIST_SPLITS is preflight.MNIST_SPLITS
    assert formats._EXPECTED is preflight.EXPECTED and formats._dataset_files_present is preflight.dataset_files_present


def test_importing_the_preflight_loads_no_torch_ray_or_boto3():
    code = ("import sys, service.core.preflight; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'ray', 'boto3', 'trainer')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- local data
def test_local_data_path_must_hold_the_datasets_files(tmp_path):
    def problems(name: str, path: Path) -> list[str]:
        return [p.message for p in data_problems(data_spec(name=name, path=str(path)), local_only=True)]

    (missing,) = problems("mnist", tmp_path / "nope")
    assert f"{tmp_path / 'nope'} does not exist" in missing and "train-images-idx3-ubyte" in missing
    (empty,) = problems("cifar10", tmp_path)
    assert "no cifar10 files" in empty and "cifar-10-python.tar.gz" in empty

    raw = tmp_path / "root" / "MNIST" / "raw"  # torchvision's layout, gzipped
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / f"{name}.gz").write_bytes(b"")
    assert problems("mnist", tmp_path / "root") == []
    assert problems("fashion_mnist", tmp_path / "root")  # FashionMNIST/raw/ is not there

    fake = tmp_path / "cifar-10-python.tar.gz"
    fake.write_text("not a tar")
    assert "is not a tar archive" in problems("cifar10", fake)[0]
    with tarfile.open(fake, "w:gz"):
        pass
    assert problems("cifar10", fake) == []
    folder = tmp_path / "c" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "test_batch").write_bytes(b"")
    assert problems("cifar10", tmp_path / "c") == [] and problems("cifar10", folder) == []
    # datasets that need no files
    assert data_problems(data_spec(name="digits"), local_only=False) == []


def test_download_needs_no_network_to_validate_but_a_reachable_source_to_run(tmp_path, monkeypatch):
    for name, value in no_network_env().items():
        monkeypatch.setenv(name, value)
    data = data_spec(name="cifar10", path=str(tmp_path / "cifar"), download=True)
    assert data_problems(data, local_only=True) == []
    start = time.monotonic()
    (problem,) = data_problems(data)
    assert time.monotonic() - start < 5
    assert problem.path == "data.path"
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in problem.message
    assert "point data.path at them" in problem.message


def test_an_unanswered_download_source_is_given_up_on_in_time(monkeypatch, tmp_path):
    """A source that never answers (a black hole, a DNS resolver that hangs) costs HTTP_TIMEOUT_S."""
    monkeypatch.setattr(preflight, "HTTP_TIMEOUT_S", 0.5)
    monkeypatch.setattr(preflight, "_http_problem", lambda url: time.sleep(30))
    start = time.monotonic()
    (problem,) = data_problems(data_spec(name="mnist", path=str(tmp_path / "m"), download=True))
    assert time.monotonic() - start < 2
    assert "no answer within 0.5 s" in problem.message and "yann.lecun.com" in problem.message


def test_local_storage_is_created_and_probed_and_an_unwritable_one_refused(tmp_path):
    assert storage_problems(str(tmp_path / "new" / "runs")) == []
    assert list((tmp_path / "new" / "runs").iterdir()) == []  # the probe is gone
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    (problem,) = storage_problems(str(blocker / "runs"))
    assert problem.path == "storage.uri" and f"cannot write under {blocker / 'runs'}" in problem.message


def test_every_problem_is_reported_at_once(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    spec = parse_spec(spec_text(tmp_path, {"name": "mnist", "path": str(tmp_path / "nope")},
                                storage={"uri": str(blocker / "runs")}), source="x.yaml")
    with pytest.raises(PreflightError) as err:
        preflight.check(spec, source="x.yaml")
    assert isinstance(err.value, SpecError)  # the CLI's user error: exit 2, no traceback
    assert [p.path for p in err.value.problems] == ["data.path", "storage.uri"]
    assert str(err.value).startswith("x.yaml: pre-flight found 2 problems; nothing was started")


# ----------------------------------------------------------------------------- the real CLI
def test_run_refuses_a_missing_data_path_in_seconds_before_ray_starts(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(tmp_path, {"name": "mnist", "path": str(tmp_path / "mnist")}))
    result, elapsed = sweepctl("run", str(spec))
    assert result.returncode == 2, result.stdout + result.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert len(errors) == 1
    assert f"data.path: {tmp_path / 'mnist'} does not exist" in errors[0]
    assert all(name in errors[0] for name in MNIST_FILES)
    assert not (tmp_path / "runs" / "preflight-test").exists()  # no sweep written: Ray never started
    assert "ray" not in result.stdout.lower()

    # validate says the same (no network, no writes); --no-preflight skips it
    result, _ = sweepctl("validate", str(spec))
    assert result.returncode == 2 and "does not exist" in result.stderr
    result, _ = sweepctl("validate", str(spec), "--no-preflight")
    assert result.returncode == 0 and result.stdout.startswith("OK preflight-test")


def test_run_refuses_an_unreachable_download_source_in_seconds(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(tmp_path, {"name": "mnist", "path": str(tmp_path / "mnist"), "download": True}))
    validated, _ = sweepctl("validate", str(spec), env=no_network_env())
    assert validated.returncode == 0, validated.stderr  # downloading is a run-time matter
    result, elapsed = sweepctl("run", str(spec), env=no_network_env())
    assert result.returncode == 2, result.stdout + result.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert "Traceback" not in result.stdout + result.stderr
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in result.stderr
    assert "download the files on a connected machine" in result.stderr.lower()
    assert not (tmp_path / "runs" / "preflight-test").exists()


def test_resume_checks_the_storage_before_reading_the_stored_spec(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result, elapsed = sweepctl("resume", "nothing-here", "--storage", str(blocker / "runs"))
    assert result.returncode == 2 and elapsed < 5
    assert "storage.uri" in result.stderr and "cannot write under" in result.stderr
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- S3 (moto)
@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    import boto3

    point_aws_at(s3_server, monkeypatch, tmp_path)
    client = boto3.session.Session().client("s3")
    bucket = f"preflight-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def test_s3_storage_that_is_writable_passes_and_keeps_nothing(s3):
    client, bucket = s3
    assert storage_problems(f"s3://{bucket}/team-a") == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # the probe was deleted


def test_s3_storage_in_a_missing_bucket_or_a_dead_endpoint_is_refused(s3, monkeypatch):
    (problem,) = storage_problems("s3://no-such-bucket-here/runs")
    assert problem.path == "storage.uri" and "bucket 'no-such-bucket-here' does not exist" in problem.message

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    start = time.monotonic()
    (problem,) = storage_problems(f"s3://{s3[1]}/runs")
    assert time.monotonic() - start < preflight.S3_TIMEOUT_S + 1
    assert "127.0.0.1" in problem.message and "AWS_ENDPOINT_URL" in problem.message


def test_s3_with_bad_credentials_is_refused(s3, monkeypatch):
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server checks credentials now
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    (problem,) = storage_problems(f"s3://{s3[1]}/runs")
    assert "access refused (InvalidAccessKeyId)" in problem.message and "AWS_ACCESS_KEY_ID" in problem.message
    (problem,) = data_problems(data_spec(name="cifar10", path=f"s3://{s3[1]}/cifar-10-python.tar.gz"))
    assert problem.path == "data.path" and "access refused" in problem.message


def test_s3_data_path_must_name_an_object_or_a_prefix_with_objects(s3):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="datasets/cifar-10-python.tar.gz", Body=b"x")
    client.put_object(Bucket=bucket, Key="datasets/mnist/train-images-idx3-ubyte.gz", Body=b"x")
    for path in ("datasets/cifar-10-python.tar.gz", "datasets/mnist", "datasets/mnist/"):
        name = "mnist" if "mnist" in path else "cifar10"
        assert data_problems(data_spec(name=name, path=f"s3://{bucket}/{path}")) == [], path
    assert data_problems(data_spec(name="mnist", path=f"s3://{bucket}/datasets/mnist"), local_only=True) == []
    (problem,) = data_problems(data_spec(name="cifar10", path=f"s3://{bucket}/datasets/cifar-100.tar.gz"))
    assert f"no object s3://{bucket}/datasets/cifar-100.tar.gz" in problem.message


def test_an_s3_endpoint_that_never_answers_is_given_up_on_in_time(s3, monkeypatch):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(preflight, "S3_TIMEOUT_S", 1.0)
        start = time.monotonic()
        (problem,) = storage_problems(f"s3://{s3[1]}/runs")
        assert time.monotonic() - start < 2
    assert "no answer within 1 s" in problem.message and "AWS_ENDPOINT_URL" in problem.message
