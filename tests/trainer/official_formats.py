"""Writers of tiny datasets in their official on-disk formats, shared by the data tests.

Nothing here imports our readers: the files are written from the format descriptions
(CIFAR: python-2 pickles, optionally in the official .tar.gz; MNIST: idx files, optionally .gz).
"""

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch


# ----------------------------------------------------------------------------- CIFAR pickles
def _dump(path: Path, obj: dict) -> None:
    # Bytes keys, as the official (Python 2) pickles load with encoding="bytes".
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(root: Path, per_batch: int = 3, num_test: int = 4) -> dict:
    """A tiny CIFAR-10 in the official layout under root/cifar-10-batches-py; returns what was written."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"name{i}" for i in range(10)]
    train_x, train_y = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        _dump(folder / f"data_batch_{i}", {b"batch_label": b"x", b"data": data, b"labels": labels})
        train_x.append(data)
        train_y += labels
    test = rng.integers(0, 256, size=(num_test, 3072), dtype=np.uint8)
    # A known pixel: image 1, green channel (1), row 5, column 7 -> offset 1*1024 + 5*32 + 7.
    test[1, 1 * 1024 + 5 * 32 + 7] = 201
    test_y = rng.integers(0, 10, size=num_test).tolist()
    _dump(folder / "test_batch", {b"data": test, b"labels": test_y})
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in names], b"num_vis": 3072})
    return dict(
        folder=folder,
        train_x=np.concatenate(train_x),
        train_y=train_y,
        test_x=test,
        test_y=test_y,
        names=names,
    )


def write_cifar100(root: Path, num_train: int = 6, num_test: int = 3) -> dict:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train = rng.integers(0, 256, size=(num_train, 3072), dtype=np.uint8)
    train[0, 2 * 1024 + 31 * 32 + 0] = 77  # image 0, blue, last row, first column
    train_y = rng.integers(0, 100, size=num_train).tolist()
    test = rng.integers(0, 256, size=(num_test, 3072), dtype=np.uint8)
    test_y = rng.integers(0, 100, size=num_test).tolist()
    coarse = lambda n: rng.integers(0, 20, size=n).tolist()  # noqa: E731  must be ignored
    _dump(folder / "train", {b"data": train, b"fine_labels": train_y, b"coarse_labels": coarse(num_train)})
    _dump(folder / "test", {b"data": test, b"fine_labels": test_y, b"coarse_labels": coarse(num_test)})
    names = [f"fine{i}" for i in range(100)]
    _dump(
        folder / "meta",
        {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"c"] * 20},
    )
    return dict(folder=folder, train_x=train, train_y=train_y, test_x=test, test_y=test_y, names=names)


def make_tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def assert_matches(raw, written: dict) -> None:
    n_train = len(written["train_y"])
    assert raw.train_x.dtype == torch.uint8 and raw.train_x.shape == (n_train, 3, 32, 32)
    assert raw.train_y.dtype == torch.int64
    assert torch.equal(raw.train_x, torch.from_numpy(written["train_x"]).view(-1, 3, 32, 32))
    assert raw.train_y.tolist() == written["train_y"]
    assert torch.equal(raw.test_x, torch.from_numpy(written["test_x"]).view(-1, 3, 32, 32))
    assert raw.test_y.tolist() == written["test_y"]
    assert raw.class_names == written["names"]


# ----------------------------------------------------------------------------- MNIST idx
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """The idx format: 4-byte big-endian magic, one big-endian uint32 per dimension, then the bytes."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(folder: Path, *, gz: bool = False, num_train: int = 12, num_test: int = 5, seed: int = 0) -> dict:
    """The four official idx files (28x28 uint8 images, labels 0..9) in ``folder``; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, size=(num_train, 28, 28), dtype=np.uint8),
        "train_y": np.arange(num_train, dtype=np.uint8) % 10,
        "test_x": rng.integers(0, 256, size=(num_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, size=num_test, dtype=np.uint8),
    }
    arrays["train_x"][3, 27, 0] = 201  # a known pixel: image 3, last row, first column
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in IDX_FILES.items():
        data = idx_bytes(arrays[key], 0x803 if key.endswith("_x") else 0x801)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def assert_mnist_matches(raw, written: dict) -> None:
    for key in ("train_x", "test_x"):
        x = getattr(raw, key)
        assert x.dtype == torch.uint8 and x.shape == (len(written[key]), 1, 28, 28)
        assert torch.equal(x[:, 0], torch.from_numpy(written[key]))
    for key in ("train_y", "test_y"):
        y = getattr(raw, key)
        assert y.dtype == torch.int64 and y.tolist() == written[key].tolist()
