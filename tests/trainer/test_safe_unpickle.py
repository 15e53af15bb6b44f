"""CIFAR files are data: a crafted pickle (os.system, builtins.exec, subprocess) fails with an
error naming the file and runs nothing, from a folder, the .tar.gz and s3://; real-format batches,
however they were pickled, still load (service/core/safe_pickle.py)."""

import builtins
import os
import pickle
import re
import subprocess
import uuid

import numpy as np
import pytest

from conftest import point_aws_at
from official_formats import assert_matches, make_tar, write_cifar10, write_cifar100
from service.core.errors import DataFormatError
from service.core.safe_pickle import ForbiddenPickle, loads_arrays
from service.core.spec import data_spec
from trainer.data import load_dataset, read_cifar


class _Payload:
    """Pickles as a call of ``func(*args)``: what a crafted data file would run on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker):
    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": _Payload(subprocess.call, ["touch", str(marker)]),
    }


# Protocol 2 writes Python 2's names (pickle's fix_imports): the message gives both.
REFUSED = {"os.system": "posix.system:", "builtins.exec": "__builtin__.exec (builtins.exec in Python 3):",
           "subprocess.call": "commands.call (subprocess.call in Python 3):"}


def crafted_batch(payload, protocol=2) -> bytes:
    """A data_batch_1 that looks like the real thing, with the payload where the pixels go."""
    return pickle.dumps({b"batch_label": b"x", b"data": payload, b"labels": [0, 1, 2]}, protocol=protocol)


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "subprocess.call"])
def test_a_crafted_batch_in_a_folder_fails_naming_the_file_and_runs_nothing(tmp_path, kind):
    # The payload is live: plain pickle runs it (so a run of it below would be noticed).
    control = tmp_path / "control-ran"
    pickle.loads(crafted_batch(payloads(control)[kind]))
    assert control.exists()

    marker = tmp_path / "payload-ran"
    written = write_cifar10(tmp_path / "data")
    (written["folder"] / "data_batch_1").write_bytes(crafted_batch(payloads(marker)[kind]))
    with pytest.raises(DataFormatError, match=r"CIFAR file data_batch_1 in .*data is not a CIFAR data pickle: "
                                              r"refused to load " + re.escape(REFUSED[kind])) as err:
        read_cifar(tmp_path / "data", "cifar10")
    assert str(written["folder"].parent) in str(err.value)
    with pytest.raises(DataFormatError, match="CIFAR file data_batch_1"):  # as a trial reads it
        load_dataset(data_spec(name="cifar10", path=str(tmp_path / "data"), val_fraction=0.2), seed=0)
    assert not marker.exists()


def test_a_crafted_batch_in_the_tar_gz_or_a_crafted_meta_fails_and_runs_nothing(tmp_path):
    marker = tmp_path / "payload-ran"
    written = write_cifar10(tmp_path / "src")
    (written["folder"] / "data_batch_3").write_bytes(crafted_batch(payloads(marker)["os.system"], protocol=4))
    archive = make_tar(written["folder"], tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DataFormatError, match=r"CIFAR file data_batch_3 in .*cifar-10-python\.tar\.gz .*posix\.system"):
        read_cifar(archive, "cifar10")

    c100 = write_cifar100(tmp_path / "c100")
    (c100["folder"] / "meta").write_bytes(pickle.dumps({b"fine_label_names": payloads(marker)["builtins.exec"]}))
    with pytest.raises(DataFormatError, match=r"CIFAR file meta in .*refused to load builtins\.exec"):
        read_cifar(c100["folder"], "cifar100")
    assert not marker.exists()


def test_a_crafted_batch_on_s3_fails_naming_the_file_and_runs_nothing(s3_server, monkeypatch, tmp_path):
    import boto3

    point_aws_at(s3_server, monkeypatch, tmp_path)
    monkeypatch.setenv("SWEEP_DATA_CACHE", str(tmp_path / "cache"))
    client, bucket = boto3.session.Session().client("s3"), f"data-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    marker = tmp_path / "payload-ran"
    written = write_cifar10(tmp_path / "src")
    (written["folder"] / "data_batch_1").write_bytes(crafted_batch(payloads(marker)["subprocess.call"]))
    client.upload_file(str(make_tar(written["folder"], tmp_path / "c.tar.gz")), bucket, "d/cifar-10-python.tar.gz")
    for path in written["folder"].iterdir():  # and the folder form, object by object
        client.upload_file(str(path), bucket, f"f/cifar-10-batches-py/{path.name}")

    for uri in (f"s3://{bucket}/d/cifar-10-python.tar.gz", f"s3://{bucket}/f/"):
        with pytest.raises(DataFormatError, match=r"CIFAR file data_batch_1 in .* refused to load commands\.call \(subprocess\.call"):
            load_dataset(data_spec(name="cifar10", path=uri, val_fraction=0.2), seed=0)
    assert not marker.exists()


def _python2_style(data: bytes) -> bytes:
    """A protocol-2 pickle as numpy 1.x (and so the official Python 2 files) names _reconstruct."""
    return data.replace(b"numpy._core.multiarray\n_reconstruct\n", b"numpy.core.multiarray\n_reconstruct\n")


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5, "numpy1"])
def test_real_format_batches_load_whatever_protocol_pickled_them(tmp_path, protocol):
    written = write_cifar10(tmp_path / "data")
    for path in written["folder"].iterdir():  # re-pickled: str keys (Python 3), numpy labels, a set
        obj = pickle.loads(path.read_bytes(), encoding="bytes")
        obj = {k.decode(): (np.asarray(v) if k == b"labels" else v) for k, v in obj.items()} | {"seen": {1, 2}}
        data = pickle.dumps(obj, protocol=2 if protocol == "numpy1" else protocol)
        if protocol == "numpy1":
            data = _python2_style(data)
            assert (b"numpy.core.multiarray\n_reconstruct\n" in data) == (path.name != "batches.meta")
        path.write_bytes(data)
    assert_matches(read_cifar(written["folder"], "cifar10"), written)


def test_the_allow_list_is_numpy_arrays_and_builtin_containers_only():
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    value = {b"a": array, "b": [1, 2.5, None, True], "c": (frozenset({1}), {2}, bytearray(b"x"), b"y", "z")}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        loaded = loads_arrays(pickle.dumps(value, protocol=protocol))
        assert np.array_equal(loaded[b"a"], array) and loaded["b"] == value["b"] and loaded["c"] == value["c"]
    # Anything else is refused by name before it is called, including numpy's own loaders and
    # builtins that reach further (getattr, eval), and the copyreg reconstructor of any class.
    for module, name in [("builtins", "getattr"), ("builtins", "eval"), ("__builtin__", "eval"), ("os", "system"),
                         ("numpy", "load"), ("numpy.core.multiarray", "scalar"), ("copyreg", "_reconstructor"),
                         ("numpy.testing", "measure"), ("collections", "OrderedDict")]:
        with pytest.raises(ForbiddenPickle, match=f"refused to load {module}.{name}"):
            loads_arrays(f"c{module}\n{name}\n)R.".encode())
