"""Datasets as published: the official train and test splits (``RawData``), read from their files.

Where the files come from (MNIST, Fashion-MNIST, CIFAR-10/100, all in their official formats):

* a local directory or file (``/data/...`` or ``file:///data/...``), read where it is;
* ``s3://bucket/key`` (one file, e.g. the CIFAR ``.tar.gz``) or ``s3://bucket/prefix/`` (every
  object under the prefix): ``service.core.fetch.fetch_to_cache`` copies it once per node into a
  local cache;
* ``download: true``: torchvision's dataset classes fetch the official files into the local
  ``path`` when they are missing. We still read them with our own readers below (torchvision's
  CIFAR class refuses files whose MD5 differs from the published ones, e.g. our test files).

Plus two that need no files: scikit-learn's bundled digits and seeded synthetic data.
"""

from __future__ import annotations

import gzip
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from service.core import safe_pickle
from service.core.errors import DataFormatError
from service.core.fetch import exclusive_lock, fetch_to_cache
# Which files each dataset's path holds is the torch-free pre-flight's knowledge (one owner): the
# readers below find their files with it, and sweepctl checks a data.path with it before Ray starts.
from service.core.preflight import CIFAR_LAYOUTS as _CIFAR
from service.core.preflight import EXPECTED as _EXPECTED
from service.core.preflight import MNIST_FOLDERS as _MNIST
from service.core.preflight import MNIST_SPLITS as _MNIST_SPLITS
from service.core.preflight import dataset_files_present as _dataset_files_present
from service.core.preflight import find_cifar as _find_cifar
from service.core.preflight import find_mnist_folder as _find_mnist_folder
from service.core.preflight import idx_file as _idx_file
from service.core.spec import ON_DISK, DataSpec
from trainer.data.splits import seed63, split_indices

log = logging.getLogger(__name__)

# The digits test split is held out with this constant seed, not the sweep seed, so that every
# trial of every sweep is evaluated on the same images.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 20_240_601

# Synthetic data: per-pixel noise std (the class patterns have std 1) is this times the cube root
# of the pixel count C*H*W. More pixels carry more evidence, so the noise must grow with them to
# keep the task comparably hard; the constant was tuned so the default MLP/CNN reach >90% val
# accuracy within 2-3 epochs (Adam, lr 1e-3, batch 64) on 1x8x8 up to 3x32x32, without the
# smaller CNNs getting there in the first epoch.
SYNTHETIC_NOISE_SCALE = 0.5


@dataclass
class RawData:
    """A dataset as published: the official train and test splits, before our split/normalization.

    Images are NCHW. CIFAR and MNIST images are uint8 in 0..255 (as stored); digits and synthetic
    images are already float32 (digits scaled to [0, 1]). ``load_dataset`` converts either to float32.
    """

    train_x: Tensor
    train_y: Tensor  # int64 class ids
    test_x: Tensor
    test_y: Tensor
    class_names: list[str]


# A function that puts the official files of dataset ``name`` under the directory ``root``
# (``torchvision_download`` on connected machines; tests pass one that writes the files itself).
Downloader = Callable[[str, Path], None]


def read_raw(spec: DataSpec, seed: int, downloader: Downloader) -> RawData:
    """The official train and test splits of ``spec.name`` (synthetic data: generated from ``seed``).

    ``downloader`` is used only when ``spec.download`` is set and the files are missing at ``spec.path``.
    """
    if spec.name == "synthetic":
        return _synthetic(spec, seed)
    if spec.name == "digits":
        return _digits()
    if spec.name in ON_DISK:
        return _read_on_disk(spec, downloader)
    raise ValueError(f"unknown dataset {spec.name!r}; expected synthetic, digits or one of {ON_DISK}")


# (C, H, W) of one image and the number of classes, as the readers below return them.
_SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
           "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}


def dataset_shape(spec: DataSpec) -> tuple[tuple[int, int, int], int]:
    """(image shape (C, H, W), number of classes) of ``spec``'s dataset without reading it: what a
    model is built for (a constraint on its size is checked before any data is loaded)."""
    if spec.name == "synthetic":
        return (spec.channels, spec.image_size, spec.image_size), spec.num_classes
    return _SHAPES[spec.name]


def _synthetic(spec: DataSpec, seed: int) -> RawData:
    """Class prototypes plus Gaussian noise, entirely determined by ``seed``.

    Each class gets a smooth random pattern (a 4x4 random grid per channel, upsampled to the image
    size) so the signal is spatially correlated like real images and a CNN has something to find.
    The noise is strong enough per pixel that a single pixel says little about the class: the
    model has to pool evidence over the image.
    """
    generator = torch.Generator().manual_seed(seed63(seed))
    c, size, k = spec.channels, spec.image_size, spec.num_classes
    noise_std = SYNTHETIC_NOISE_SCALE * (c * size * size) ** (1 / 3)
    coarse = torch.randn(k, c, min(4, size), min(4, size), generator=generator)
    prototypes = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    # Scale each pattern to std 1 (a 1-pixel grey "image" has std 0: leave that one alone).
    scale = prototypes.std(dim=(1, 2, 3), keepdim=True, correction=0)
    prototypes = prototypes / torch.where(scale > 0, scale, torch.ones_like(scale))

    def sample(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randperm(n, generator=generator) % k  # balanced classes, shuffled
        noise = torch.randn(n, c, size, size, generator=generator) * noise_std
        return prototypes[labels] + noise, labels

    train_x, train_y = sample(spec.num_samples)
    test_x, test_y = sample(max(1, spec.num_samples // 4))
    return RawData(train_x, train_y, test_x, test_y, [f"class_{i}" for i in range(k)])


def _digits() -> RawData:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), with a fixed test hold-out."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).to(torch.float32).div_(16.0).unsqueeze(1)  # (N,1,8,8)
    labels = torch.from_numpy(digits.target).to(torch.int64)
    # Reuse the split helper with a constant seed: "train" here is the official training split
    # that load_dataset will split again into train/val by the sweep seed.
    rest, test = split_indices(len(labels), DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    names = [str(i) for i in range(10)]
    return RawData(images[rest], labels[rest], images[test], labels[test], names)


# ----------------------------------------------------------------------------- on-disk datasets
def _read_on_disk(spec: DataSpec, downloader: Downloader) -> RawData:
    """Resolve ``spec.path`` to local files (s3:// → node cache; download when asked), then read them."""
    local = fetch_to_cache(spec.path, spec.sha256)  # local paths come back unchanged
    if not _dataset_files_present(spec.name, local):
        if not spec.download:
            where = f"{spec.path} (local copy: {local})" if spec.path.startswith("s3://") else spec.path
            raise FileNotFoundError(
                f"no {spec.name} files at {where}: expected {_EXPECTED[spec.name]}. Fix data.path, "
                "or set data.download: true to fetch the official files into a local data.path"
            )
        _download_once(spec.name, local, downloader)
    if spec.name in _MNIST:
        return read_mnist(local, spec.name)
    return read_cifar(local, spec.name)


def _download_once(name: str, root: Path, downloader: Downloader) -> None:
    """Run ``downloader`` into ``root`` unless the files are there, once per node.

    Trials starting together on one node all find the files missing; the lock makes one of them
    download while the others wait, then find the files present.
    """
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / ".download.lock"):
        if _dataset_files_present(name, root):
            return
        log.info("downloading %s into %s", name, root)
        downloader(name, root)
    if not _dataset_files_present(name, root):
        raise FileNotFoundError(
            f"downloading {name} into {root} finished, but the files are still missing: "
            f"expected {_EXPECTED[name]}"
        )


def torchvision_download(name: str, root: Path) -> None:
    """Fetch the official files of ``name`` into ``root`` with torchvision (needs internet).

    Layout afterwards: ``root/MNIST/raw/*-ubyte[.gz]``, ``root/FashionMNIST/raw/...``,
    ``root/cifar-10-python.tar.gz`` + ``root/cifar-10-batches-py/``, ``root/cifar-100-python...``;
    our readers accept all of these. torchvision loads the split it was asked for as a side effect;
    we discard that and read the files ourselves.
    """
    from torchvision import datasets

    classes = {
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
    }
    if name not in classes:
        raise ValueError(f"torchvision cannot download {name!r}; expected one of {sorted(classes)}")
    for train in (True, False):  # one archive/file set holds both splits; the second call only checks
        classes[name](root=str(root), train=train, download=True)


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST
# The official idx files: service/core/preflight.py's MNIST_SPLITS (names) and MNIST_FOLDERS
# (torchvision's <root>/<folder>/raw/ layout).
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# idx magic numbers: two zero bytes, the element type (0x08 = unsigned byte), the number of dims.
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
MNIST_SIDE = 28  # pixels


def read_mnist(path: str | Path, variant: Literal["mnist", "fashion_mnist"]) -> RawData:
    """Read MNIST or Fashion-MNIST from the four official idx files (each plain or ``.gz``).

    ``path`` is the directory holding them, or a root in torchvision's layout
    (``<path>/MNIST/raw/`` or ``<path>/FashionMNIST/raw/``). Images come back uint8 (N, 1, 28, 28).
    """
    if variant not in _MNIST:
        raise ValueError(f"unknown MNIST variant {variant!r}; expected 'mnist' or 'fashion_mnist'")
    folder = _find_mnist_folder(Path(path), variant)
    if folder is None:
        raise FileNotFoundError(f"no {variant} files in {path}: expected {_EXPECTED[variant]}")
    splits = {}
    for split, (images_name, labels_name) in _MNIST_SPLITS.items():
        images = read_idx(_idx_file(folder, images_name), IDX_IMAGES_MAGIC)
        labels = read_idx(_idx_file(folder, labels_name), IDX_LABELS_MAGIC)
        if images.shape[1:] != (MNIST_SIDE, MNIST_SIDE):
            raise DataFormatError(f"{folder / images_name}: expected 28x28 images, got {images.shape[1:]}")
        if len(images) != len(labels):
            raise DataFormatError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise DataFormatError(f"{folder / labels_name}: labels must be 0..9, found {labels.max()}")
        splits[split] = (torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
    names = [str(i) for i in range(10)] if variant == "mnist" else list(FASHION_MNIST_CLASSES)
    return RawData(*splits["train"], *splits["test"], class_names=names)


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """One idx file (``.gz`` decompressed): a big-endian header, then the uint8 elements row-major.

    Header: a 4-byte magic number (0x00000803 for N x rows x cols images, 0x00000801 for N
    labels), then one big-endian uint32 per dimension.
    """
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    if len(data) < 4:
        raise DataFormatError(f"{path}: too short for an idx file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DataFormatError(
            f"{path}: bad idx magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            "(not an MNIST idx file, or images and labels swapped?)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) - header != int(np.prod(dims)):
        raise DataFormatError(
            f"{path}: header says dims {dims} ({int(np.prod(dims))} bytes of data) "
            f"but the file holds {len(data) - header}"
        )
    # copy: an array over `bytes` is read-only, and torch wants writable memory.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


# ----------------------------------------------------------------------------- CIFAR
# The official layouts (archive, folder, batch files, label keys): service/core/preflight.py's
# CIFAR_LAYOUTS; what a path should hold, for messages: its EXPECTED.


def read_cifar(path: str | Path, variant: Literal["cifar10", "cifar100"]) -> RawData:
    """Read CIFAR-10/100 in the official python-pickle layout.

    ``path`` may be the batches folder itself (``cifar-10-batches-py`` / ``cifar-100-python``), a
    directory containing that folder or the official ``.tar.gz``, or the ``.tar.gz`` itself (read
    directly, nothing is extracted). CIFAR-100 uses the fine (100-class) labels.

    The files are pickles, as published, read as data: only numpy arrays in builtin containers
    load (service/core/safe_pickle.py); a pickle naming anything else is a ``DataFormatError`` naming
    the file, and nothing in it runs.
    """
    if variant not in _CIFAR:
        raise ValueError(f"unknown CIFAR variant {variant!r}; expected 'cifar10' or 'cifar100'")
    layout = _CIFAR[variant]
    read = _cifar_reader(Path(path), layout, _EXPECTED[variant])

    train = [_cifar_batch(read(name), layout["label_key"], name, path) for name in layout["train"]]
    test_x, test_y = _cifar_batch(read(layout["test"]), layout["label_key"], layout["test"], path)
    meta = _unpickle(read(layout["meta"]), layout["meta"], path)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, layout["names_key"])]
    return RawData(
        train_x=torch.cat([x for x, _ in train]),
        train_y=torch.cat([y for _, y in train]),
        test_x=test_x,
        test_y=test_y,
        class_names=names,
    )


def _cifar_reader(path: Path, layout: dict, expected: str) -> Callable[[str], bytes]:
    """A function returning the bytes of one file of the dataset, wherever ``path`` points."""
    found = _find_cifar(path, layout)
    if found is None:
        if path.is_dir():
            raise FileNotFoundError(f"no CIFAR data found in {path}: expected {expected}")
        raise FileNotFoundError(f"{path} does not exist: expected {expected}")
    if found.is_dir():
        return lambda name: _read_file(found / name)
    if not tarfile.is_tarfile(found):
        raise DataFormatError(f"{found} is not a tar archive: expected {expected}")
    return _tar_reader(found, layout["folder"], [*layout["train"], layout["test"], layout["meta"]])


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"missing CIFAR file {path}")
    return path.read_bytes()


def _tar_reader(archive: Path, folder: str, names: list[str]) -> Callable[[str], bytes]:
    """Read the dataset's files from the archive in one sequential pass (gzip has no random access)."""
    wanted = {f"{folder}/{name}": name for name in names}
    files: dict[str, bytes] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            name = wanted.get(member.name.removeprefix("./"))
            if name is not None and member.isfile():
                files[name] = tar.extractfile(member).read()

    def read(name: str) -> bytes:
        if name not in files:
            raise FileNotFoundError(f"{archive} has no member '{folder}/{name}'")
        return files[name]

    return read


def _unpickle(data: bytes, name: str, path: str | Path) -> dict:
    """One CIFAR file's dict, through the restricted unpickler: a crafted file fails, naming itself
    (``path``: the dataset's folder or archive), before anything it names is called."""
    try:
        # encoding="bytes": the official files were pickled by Python 2, so their str keys load as bytes.
        obj = safe_pickle.loads_arrays(data, encoding="bytes")
    except MemoryError:
        raise
    except Exception as err:  # a refused global, or not a pickle at all (truncated, garbage)
        raise DataFormatError(f"CIFAR file {name} in {path} is not a CIFAR data pickle: {err}") from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"CIFAR file {name} in {path}: expected a dict, got {type(obj).__name__}")
    return obj


def _get(d: dict, key: str):
    """A value by its key as bytes (official files) or str (files re-pickled by Python 3)."""
    if key.encode() in d:
        return d[key.encode()]
    if key in d:
        return d[key]
    raise DataFormatError(f"CIFAR file lacks the key {key!r}; has {sorted(map(repr, d))}")


def _cifar_batch(data: bytes, label_key: str, name: str, path: str | Path) -> tuple[Tensor, Tensor]:
    """One batch file: rows of 3072 bytes (1024 red, then green, then blue, each row-major 32x32)."""
    batch = _unpickle(data, name, path)
    pixels = np.asarray(_get(batch, "data"), dtype=np.uint8)
    if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"CIFAR file {name}: expected data of shape (N, 3072), got {pixels.shape}")
    labels = np.asarray(_get(batch, label_key), dtype=np.int64)
    if labels.shape != (pixels.shape[0],):
        raise DataFormatError(f"CIFAR file {name}: {pixels.shape[0]} images but {labels.shape} labels")
    x = torch.from_numpy(pixels.reshape(-1, 3, 32, 32).copy())  # copy: frombuffer data is read-only
    return x, torch.from_numpy(labels)
