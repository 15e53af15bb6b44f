"""s3:// data paths: fetched once per node into the cache, locked, checksummed — against a real
S3 protocol server (moto, see the ``s3_server`` fixture) over HTTP."""

import hashlib
import logging
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import torch

from conftest import point_aws_at
from official_formats import IDX_FILES, assert_matches, assert_mnist_matches, make_tar, write_cifar10, write_mnist
from service.core.fetch import cache_location, fetch_to_cache
from service.core.spec import data_spec
from trainer.data import load_dataset, read_cifar, read_mnist


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """A fresh bucket on the session's S3 server; this test's env points boto3 at it, cache in tmp."""
    import boto3

    point_aws_at(s3_server, monkeypatch, tmp_path)
    monkeypatch.setenv("SWEEP_DATA_CACHE", str(tmp_path / "cache"))
    client = boto3.session.Session().client("s3")
    bucket = f"data-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


@pytest.fixture
def downloads(caplog):
    """The fetches service.core.fetch logged so far (one INFO record per download, from any thread)."""
    caplog.set_level(logging.INFO, logger="service.core.fetch")
    return lambda: [r.getMessage() for r in caplog.records if r.getMessage().startswith("downloading")]


def upload_cifar10(s3, tmp_path, key="datasets/cifar-10-python.tar.gz"):
    client, bucket = s3
    written = write_cifar10(tmp_path / "src")
    archive = make_tar(written["folder"], tmp_path / "cifar-10-python.tar.gz")
    client.upload_file(str(archive), bucket, key)
    return f"s3://{bucket}/{key}", hashlib.sha256(archive.read_bytes()).hexdigest(), written


def upload_mnist(s3, tmp_path, prefix="datasets/mnist/"):
    client, bucket = s3
    folder = tmp_path / "mnist-src"
    written = write_mnist(folder, gz=True)
    for f in folder.iterdir():
        client.upload_file(str(f), bucket, prefix + f.name)
    return f"s3://{bucket}/{prefix}", written


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_archive_and_directory_load_from_s3_once(s3, tmp_path, monkeypatch, downloads):
    cifar_uri, sha, cifar = upload_cifar10(s3, tmp_path)
    mnist_uri, mnist = upload_mnist(s3, tmp_path)
    cifar_spec = data_spec(name="cifar10", path=cifar_uri, sha256=sha, val_fraction=0.2)
    mnist_spec = data_spec(name="mnist", path=mnist_uri, val_fraction=0.25)

    c10, mn = load_dataset(cifar_spec, seed=0), load_dataset(mnist_spec, seed=0)
    assert c10.input_shape == (3, 32, 32) and len(c10.train_y) + len(c10.val_y) == 15
    assert mn.input_shape == (1, 28, 28) and len(mn.train_y) + len(mn.val_y) == 12
    # The cached copies are the uploaded bytes: an archive file and a directory of idx files.
    cached_archive, cached_dir = cache_location(cifar_uri), cache_location(mnist_uri)
    assert cached_archive.is_file() and cached_dir.is_dir()
    assert sorted(f.name for f in cached_dir.iterdir()) == sorted(f"{n}.gz" for n in IDX_FILES.values())
    assert_matches(read_cifar(cached_archive, "cifar10"), cifar)
    assert_mnist_matches(read_mnist(cached_dir, "mnist"), mnist)
    assert len(downloads()) == 2

    # Second load: from the cache, without any request (the endpoint now refuses connections).
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    assert torch.equal(load_dataset(cifar_spec, seed=0).train_x, c10.train_x)
    assert torch.equal(load_dataset(mnist_spec, seed=0).train_x, mn.train_x)
    assert len(downloads()) == 2


def test_key_without_slash_that_is_a_prefix_is_a_directory(s3, tmp_path):
    mnist_uri, mnist = upload_mnist(s3, tmp_path, prefix="sets/fashion/")
    local = fetch_to_cache(mnist_uri.rstrip("/"))
    assert local.is_dir()
    assert_mnist_matches(read_mnist(local, "fashion_mnist"), mnist)


def test_wrong_sha256_fails_and_leaves_no_bad_file(s3, tmp_path, downloads):
    uri, sha, _ = upload_cifar10(s3, tmp_path)
    cache_root = tmp_path / "cache"
    with pytest.raises(ValueError, match=rf"sha256 mismatch for {uri}: expected 0{{64}}, got {sha}"):
        fetch_to_cache(uri, sha256="0" * 64)
    leftovers = [p for p in cache_root.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []  # neither the target nor a temporary .part file
    with pytest.raises(ValueError, match="sha256 mismatch"):  # through the spec, too
        load_dataset(data_spec(name="cifar10", path=uri, sha256="f" * 64), seed=0)

    assert fetch_to_cache(uri, sha256=sha) == cache_location(uri)
    # A cached copy that no longer matches its pin is stale: it is fetched again.
    cache_location(uri).write_bytes(b"corrupted")
    before = len(downloads())
    assert hashlib.sha256(fetch_to_cache(uri, sha256=sha).read_bytes()).hexdigest() == sha
    assert len(downloads()) == before + 1


def test_concurrent_fetches_download_once(s3, tmp_path, downloads):
    uri, sha, _ = upload_cifar10(s3, tmp_path)
    target = cache_location(uri)
    target.parent.mkdir(parents=True)
    lock = target.with_name(target.name + ".lock")
    # Another process holds the node's lock (as a trial mid-download would) ...
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys\nf = open(sys.argv[1], 'a')\n"
         "fcntl.flock(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.read()", str(lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        results, errors = [], []

        def fetch():
            try:
                results.append(fetch_to_cache(uri, sha256=sha))
            except Exception as err:  # re-raised below, in the test's thread
                errors.append(err)

        threads = [threading.Thread(target=fetch) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        # ... so both trials wait for it, and neither has downloaded anything yet.
        assert all(t.is_alive() for t in threads) and not target.exists() and downloads() == []
    finally:
        holder.stdin.close()  # the holder exits, the kernel releases its lock
        holder.wait(timeout=10)
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and results == [target, target]
    assert len(downloads()) == 1  # the first to get the lock downloads; the other finds the copy


def test_missing_data_in_s3_is_a_clear_error(s3, tmp_path, monkeypatch):
    _, bucket = s3
    with pytest.raises(FileNotFoundError, match=f"no object s3://{bucket}/nothing.tar.gz"):
        fetch_to_cache(f"s3://{bucket}/nothing.tar.gz")
    with pytest.raises(FileNotFoundError, match="bucket 'no-such-bucket-x' does not exist"):
        fetch_to_cache("s3://no-such-bucket-x/data/")
    # Objects there, but not the dataset's: say so, with both the URI and the local copy.
    mnist_uri, _ = upload_mnist(s3, tmp_path, prefix="only-mnist/")
    with pytest.raises(FileNotFoundError, match=rf"no cifar10 files at {mnist_uri} \(local copy: "):
        load_dataset(data_spec(name="cifar10", path=mnist_uri), seed=0)
    monkeypatch.setenv("SWEEP_S3_ADDRESSING_STYLE", "sideways")
    with pytest.raises(ValueError, match="SWEEP_S3_ADDRESSING_STYLE must be auto, path or virtual"):
        fetch_to_cache(f"s3://{bucket}/other.tar.gz")


def test_local_paths_pass_through_with_sha256_checked(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"some bytes")
    sha = hashlib.sha256(b"some bytes").hexdigest()
    assert fetch_to_cache(str(archive)) == archive
    assert fetch_to_cache(f"file://{archive}", sha256=sha) == archive
    assert fetch_to_cache(str(tmp_path / "not-yet")) == tmp_path / "not-yet"  # nothing is checked
    with pytest.raises(ValueError, match="sha256 mismatch"):
        fetch_to_cache(str(archive), sha256="0" * 64)
    assert archive.read_bytes() == b"some bytes"  # the user's own file is never deleted
    with pytest.raises(ValueError, match="is a directory"):
        fetch_to_cache(str(tmp_path), sha256=sha)
    with pytest.raises(ValueError, match="is a prefix"):
        fetch_to_cache("s3://bucket/some/prefix/", sha256=sha)  # refused before any request
    with pytest.raises(ValueError, match=r"'\.\.'"):
        cache_location("s3://bucket/../../etc/passwd")
    with pytest.raises(ValueError, match="unsupported data URI scheme 'gs'"):
        fetch_to_cache("gs://bucket/key")


def test_weights_uri_loads_from_s3_through_the_same_fetch(s3, tmp_path):
    """model.weights_uri: s3:// goes through fetch_to_cache like datasets do."""
    import torchvision

    from trainer.models import load_backbone_weights

    donor = torchvision.models.resnet18(weights=None)
    torch.save(donor.state_dict(), tmp_path / "resnet18.pt")
    client, bucket = s3
    client.upload_file(str(tmp_path / "resnet18.pt"), bucket, "models/resnet18.pt")
    state = load_backbone_weights(f"s3://{bucket}/models/resnet18.pt")
    assert state.keys() == {k for k in donor.state_dict() if not k.startswith("fc.")}
    assert all(torch.equal(state[k], donor.state_dict()[k]) for k in state)
