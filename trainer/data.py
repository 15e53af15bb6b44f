"""Datasets as in-memory tensors: loading, the seeded train/val split, per-epoch batches, augmentation.

Every dataset we sweep over is small enough to keep whole in memory (CIFAR-10 as float32 is about
600 MB), so there is no DataLoader and no per-sample PIL transform: a training step indexes a
tensor with a batch of indices and augments the batch in one vectorized call. That keeps a trial's
data path fast on CPU and, more importantly, exactly reproducible from ``seed``:

* ``split_indices`` / ``stratified_split_indices`` fix which images of the official training
  split are train and which are val;
* ``epoch_batches`` fixes each epoch's order, identically on every DDP rank;
* ``augment_batch`` draws all of its randomness from a caller-owned ``torch.Generator``.

None of these touch torch's global RNG, so model initialisation (seeded by the training loop) is
unaffected by how much data randomness was consumed before it.

Where the files come from (MNIST, Fashion-MNIST, CIFAR-10/100, all in their official formats):

* a local directory or file (``/data/...`` or ``file:///data/...``), read where it is;
* ``s3://bucket/key`` (one file, e.g. the CIFAR ``.tar.gz``) or ``s3://bucket/prefix/`` (every
  object under the prefix): ``fetch_to_cache`` copies it once per node into a local cache;
* ``download: true``: torchvision's dataset classes fetch the official files into the local
  ``path`` when they are missing. We still read them with our own readers below (torchvision's
  CIFAR class refuses files whose MD5 differs from the published ones, e.g. our test files).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from service.core import storage
from service.core.spec import ON_DISK, DataSpec

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

# Where s3:// data is cached on each node (one copy shared by every trial on the node).
CACHE_ENV = "SWEEP_DATA_CACHE"
DEFAULT_CACHE = "~/.cache/sweep-service/data"
# "path" for S3 servers without virtual-host bucket DNS (MinIO, moto); default: boto's "auto".


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


@dataclass
class SplitData:
    """A dataset ready for training: train/val/test tensors, normalized with the train split's stats."""

    train_x: Tensor  # float32 (N, C, H, W), normalized per channel with the train split's mean/std
    train_y: Tensor  # int64 (N,)
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor  # the official test split (or a fixed held-out part), normalized with train stats
    test_y: Tensor
    train_indices: Tensor  # int64 indices into the official training split that form train
    val_indices: Tensor  # ... that form val (disjoint from train_indices; together all of it)
    class_names: list[str]
    mean: tuple[float, ...]  # per channel, in the raw float scale (e.g. [0, 1] for CIFAR)
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return (c, h, w)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# A function that puts the official files of dataset ``name`` under the directory ``root``
# (``torchvision_download`` on connected machines; tests pass one that writes the files itself).
Downloader = Callable[[str, Path], None]


# ----------------------------------------------------------------------------- loading
def load_dataset(spec: DataSpec, seed: int, *, downloader: Downloader | None = None) -> SplitData:
    """Load ``spec.name``, split its official training set into train/val by ``seed``, normalize.

    Normalization statistics come from the train part only, so nothing about the val or test
    images leaks into training; val and test are normalized with those same statistics.
    ``downloader`` (default ``torchvision_download``) is used only when ``spec.download`` is set
    and the files are missing at ``spec.path``.
    """
    if spec.name == "synthetic":
        raw = _synthetic(spec, seed)
    elif spec.name == "digits":
        raw = _digits()
    elif spec.name in ON_DISK:
        raw = _read_on_disk(spec, downloader or torchvision_download)
    else:
        raise ValueError(f"unknown dataset {spec.name!r}; expected synthetic, digits or one of {ON_DISK}")

    if spec.val_split == "stratified":
        train_idx, val_idx = stratified_split_indices(raw.train_y, spec.val_fraction, seed)
    else:
        train_idx, val_idx = split_indices(len(raw.train_y), spec.val_fraction, seed)
    # Index the raw (uint8 for CIFAR/MNIST) images first and convert each part separately, so no
    # float32 copy of the whole official split is ever made (CIFAR-10: 150 MB vs 600 MB).
    train_x = _to_float(raw.train_x[train_idx])
    val_x = _to_float(raw.train_x[val_idx])
    test_x = _to_float(raw.test_x)

    std, mean = torch.std_mean(train_x, dim=(0, 2, 3), correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: only centre it
    for x in (train_x, val_x, test_x):
        x.sub_(mean[:, None, None]).div_(std[:, None, None])  # our own fresh copies: in place is fine

    return SplitData(
        train_x=train_x,
        train_y=raw.train_y[train_idx],
        val_x=val_x,
        val_y=raw.train_y[val_idx],
        test_x=test_x,
        test_y=raw.test_y.clone(),
        train_indices=train_idx,
        val_indices=val_idx,
        class_names=list(raw.class_names),
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
    )


def split_indices(num_samples: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random train/val split of ``range(num_samples)``: ``(train_indices, val_indices)``.

    Deterministic given the arguments; uses its own generator (never the global RNG). The val
    part has ``round(num_samples * val_fraction)`` indices, at least 1; both parts are sorted.
    """
    num_val = _num_val(num_samples, val_fraction)
    generator = torch.Generator().manual_seed(_seed63(seed))
    perm = torch.randperm(num_samples, generator=generator)
    return perm[num_val:].sort().values, perm[:num_val].sort().values


def stratified_split_indices(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded train/val split that gives val the class proportions of the whole ``labels``.

    Val has the same size as ``split_indices`` would give (``round(N * val_fraction)``, at least
    1). Each class c contributes floor or ceil of ``count_c * val_fraction`` images (so it is within
    1 image of its exact share); the classes whose share has the largest fractional part get the
    ceil, ties broken by the seed. Which images of a class go to val is a seeded permutation.
    Returns ``(train_indices, val_indices)``, sorted, disjoint, together ``range(N)``.
    """
    labels = torch.as_tensor(labels).cpu()
    num_val = _num_val(len(labels), val_fraction)
    generator = torch.Generator().manual_seed(_seed63(seed))
    classes, counts = torch.unique(labels, return_counts=True)  # sorted class ids

    exact = counts.double() * val_fraction  # each class's exact share of val
    quota = exact.floor().long()
    # Largest remainder: hand out the images the floors left over (0 <= extra <= #classes).
    extra = num_val - int(quota.sum())
    shuffled = torch.randperm(len(classes), generator=generator)  # seeded tie-break
    by_remainder = shuffled[torch.argsort((exact - quota)[shuffled], descending=True, stable=True)]
    quota[by_remainder[:extra]] += 1

    val_parts = []
    for cls, take in zip(classes.tolist(), quota.tolist()):
        members = (labels == cls).nonzero().squeeze(1)
        val_parts.append(members[torch.randperm(len(members), generator=generator)[:take]])
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[torch.cat(val_parts)] = True
    return (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)


def _num_val(num_samples: int, val_fraction: float) -> int:
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    num_val = max(1, round(num_samples * val_fraction))
    if num_val >= num_samples:
        raise ValueError(
            f"cannot split {num_samples} samples with val_fraction={val_fraction}: "
            f"val would take {num_val}, leaving no training samples"
        )
    return num_val


def _to_float(x: Tensor) -> Tensor:
    """uint8 pixels (0..255) to float32 in [0, 1]; float images are copied as float32."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32, copy=True)


def _seed63(value: int) -> int:
    """Fold any Python int into the range torch.Generator.manual_seed accepts."""
    return value % (2**63)


def _synthetic(spec: DataSpec, seed: int) -> RawData:
    """Class prototypes plus Gaussian noise, entirely determined by ``seed``.

    Each class gets a smooth random pattern (a 4x4 random grid per channel, upsampled to the image
    size) so the signal is spatially correlated like real images and a CNN has something to find.
    The noise is strong enough per pixel that a single pixel says little about the class: the
    model has to pool evidence over the image.
    """
    generator = torch.Generator().manual_seed(_seed63(seed))
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
    with _exclusive_lock(root / ".download.lock"):
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


def _dataset_files_present(name: str, path: Path) -> bool:
    """Whether ``path`` looks like it holds ``name`` (a file always counts: its reader judges it)."""
    if path.is_file():
        return True
    if name in _MNIST:
        return _find_mnist_folder(path, name) is not None
    return _find_cifar(path, _CIFAR[name]) is not None


# ----------------------------------------------------------------------------- s3:// cache
def fetch_to_cache(uri: str, sha256: str | None = None) -> Path:
    """A local path holding ``uri``: s3:// objects are fetched once per node into the cache.

    * plain paths and ``file://PATH`` come back unchanged (as a ``Path``), nothing is copied;
    * ``s3://bucket/key``: one object, cached as the file ``<cache>/s3/bucket/key``;
    * ``s3://bucket/prefix/`` (or a key that is no object but has objects under ``key/``): every
      object under the prefix, cached as the directory ``<cache>/s3/bucket/prefix``.

    The cache is ``$SWEEP_DATA_CACHE`` (default ``~/.cache/sweep-service/data``) and is keyed by
    bucket and key only: objects are assumed immutable (pin them with ``sha256``; delete the cached
    copy to fetch a changed object). A fetch holds an exclusive ``flock`` on ``<target>.lock``, so
    concurrent trials on one node download once while the others wait; it downloads to a temporary
    name next to the target and renames it into place, so a crash never leaves a partial target.

    ``sha256`` (64 lowercase hex digits) is checked for files: a local file or cached copy that does
    not match raises ``ValueError``; a fresh download that does not match is deleted, then raises.
    A cached copy that does not match is treated as stale and fetched again. The S3 client uses
    the standard AWS environment (AWS_ENDPOINT_URL[_S3], AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_DEFAULT_REGION) plus ``SWEEP_S3_ADDRESSING_STYLE`` (auto | path | virtual).
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme == "file":
        local = Path(rest if sep else uri).expanduser()
        if sha256 is not None:
            _check_sha256(local, sha256, uri)
        return local
    if scheme != "s3":
        raise ValueError(f"unsupported data URI scheme {scheme!r} in {uri!r}: use a local path, file:// or s3://")

    bucket, key = _parse_s3(uri)
    is_prefix = key == "" or key.endswith("/")
    if is_prefix and sha256 is not None:
        raise ValueError(f"sha256 checks one file, but {uri} is a prefix (a directory): drop sha256")
    target = cache_location(uri)
    if _cached(target, sha256, uri):  # the common case: no lock, no network
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.with_name(target.name + ".lock")):
        if _cached(target, sha256, uri):  # another trial fetched it while we waited for the lock
            return target
        if target.exists():  # a cached file whose sha256 does not match: stale, fetch it again
            log.warning("cached %s does not match sha256 %s; fetching %s again", target, sha256, uri)
            target.unlink()
        _download_s3(bucket, key, target, sha256, uri, is_prefix)
    return target


def cache_location(uri: str) -> Path:
    """Where ``fetch_to_cache`` keeps the copy of ``s3://bucket/key``: ``<cache>/s3/bucket/key``."""
    bucket, key = _parse_s3(uri)
    root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    return root.joinpath("s3", bucket, *_safe_parts(key, uri))


def _parse_s3(uri: str) -> tuple[str, str]:
    return storage.split_s3(uri)


def _safe_parts(key: str, uri: str) -> list[str]:
    """The path components of an object key, refusing any that would escape the cache directory."""
    parts = [p for p in key.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"refusing S3 key with '.' or '..' components: {key!r} (from {uri})")
    return parts


def _cached(target: Path, sha256: str | None, uri: str) -> bool:
    """A complete copy is there (renames are atomic) and, for a pinned file, its sha256 matches."""
    if not target.exists():
        return False
    if sha256 is None:
        return True
    if target.is_dir():
        raise ValueError(f"sha256 checks one file, but {uri} is cached as a directory ({target})")
    return storage.sha256_file(target) == sha256


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive flock, held until the block ends (released by the kernel if we crash).

    Each call opens the lock file anew, so it excludes other threads of this process as well as
    other processes. The lock file stays: deleting it would let a waiter lock a stale inode.
    """
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _s3_client():
    return storage.s3_client()  # the AWS environment + SWEEP_S3_ADDRESSING_STYLE


def _download_s3(bucket: str, key: str, target: Path, sha256: str | None, uri: str, is_prefix: bool) -> None:
    """Copy the object (or every object under the prefix) to a temporary name, then rename it to ``target``."""
    from botocore.exceptions import ClientError

    client = _s3_client()
    if not is_prefix:
        try:
            client.head_object(Bucket=bucket, Key=key)
            is_object = True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
                raise
            is_object = False
        if is_object:
            log.info("downloading %s to %s", uri, target)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            os.close(fd)
            try:
                client.download_file(bucket, key, tmp)
                if sha256 is not None:
                    _check_sha256(Path(tmp), sha256, uri)  # raises; `finally` deletes the bad copy
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
            return
        if sha256 is not None:
            raise FileNotFoundError(f"no object {uri} (sha256 needs a single file)")

    # A "directory": every object under the prefix, with its path below the prefix.
    prefix = key if is_prefix else key + "/"
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "NoSuchBucket":
            raise FileNotFoundError(f"bucket {bucket!r} does not exist (data path {uri})") from err
        raise
    keys = [k for k in keys if not k.endswith("/")]  # "folder" placeholder objects hold no data
    if not keys:
        raise FileNotFoundError(f"no object {uri} and no objects under s3://{bucket}/{prefix}")
    log.info("downloading %d objects under s3://%s/%s to %s", len(keys), bucket, prefix, target)
    tmp_dir = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part"))
    try:
        for object_key in keys:
            dest = tmp_dir.joinpath(*_safe_parts(object_key[len(prefix) :], uri))
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, object_key, str(dest))
        os.rename(tmp_dir, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # gone already after a successful rename


def _check_sha256(path: Path, expected: str, uri: str) -> None:
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ValueError(f"cannot check sha256 of {uri}: {path} {what} (sha256 pins a single file)")
    actual = storage.sha256_file(path)
    if actual != expected:
        raise ValueError(f"sha256 mismatch for {uri}: expected {expected}, got {actual}")


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST
# The official idx files (optionally gzipped), per split: (images, labels).
_MNIST_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# torchvision's layout puts the files under <root>/<folder>/raw/.
_MNIST = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
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
            raise ValueError(f"{folder / images_name}: expected 28x28 images, got {images.shape[1:]}")
        if len(images) != len(labels):
            raise ValueError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise ValueError(f"{folder / labels_name}: labels must be 0..9, found {labels.max()}")
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
        raise ValueError(f"{path}: too short for an idx file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"{path}: bad idx magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            "(not an MNIST idx file, or images and labels swapped?)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) - header != int(np.prod(dims)):
        raise ValueError(
            f"{path}: header says dims {dims} ({int(np.prod(dims))} bytes of data) "
            f"but the file holds {len(data) - header}"
        )
    # copy: an array over `bytes` is read-only, and torch wants writable memory.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_mnist_folder(path: Path, variant: str) -> Path | None:
    """The first of ``path``, ``path/<Folder>/raw`` that holds all four files (plain or .gz)."""
    for folder in (path, path / _MNIST[variant] / "raw"):
        if all(_idx_file(folder, name).is_file() for pair in _MNIST_SPLITS.values() for name in pair):
            return folder
    return None


def _idx_file(folder: Path, name: str) -> Path:
    """``folder/name`` if it exists, else ``folder/name.gz`` (which may not exist either)."""
    plain = folder / name
    return plain if plain.is_file() else folder / f"{name}.gz"


# ----------------------------------------------------------------------------- CIFAR
# Per variant: the official archive name, its top folder, train files, test file, meta file,
# the label key in each batch and the class-name key in the meta file.
_CIFAR = {
    "cifar10": dict(
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test="test_batch",
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    "cifar100": dict(
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train=["train"],
        test="test",
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}

# What each on-disk dataset's path should hold, for error messages.
_MNIST_FILE_LIST = ", ".join(name for pair in _MNIST_SPLITS.values() for name in pair)
_EXPECTED = {
    **{
        variant: f"the idx files {_MNIST_FILE_LIST} (each optionally .gz) in it or in {folder}/raw/"
        for variant, folder in _MNIST.items()
    },
    **{
        variant: f"the '{c['folder']}' folder, a directory containing it or {c['archive']}, or {c['archive']} itself"
        for variant, c in _CIFAR.items()
    },
}


def read_cifar(path: str | Path, variant: Literal["cifar10", "cifar100"]) -> RawData:
    """Read CIFAR-10/100 in the official python-pickle layout.

    ``path`` may be the batches folder itself (``cifar-10-batches-py`` / ``cifar-100-python``), a
    directory containing that folder or the official ``.tar.gz``, or the ``.tar.gz`` itself (read
    directly, nothing is extracted). CIFAR-100 uses the fine (100-class) labels.

    The files are pickles, as published; only point this at datasets you trust.
    """
    if variant not in _CIFAR:
        raise ValueError(f"unknown CIFAR variant {variant!r}; expected 'cifar10' or 'cifar100'")
    layout = _CIFAR[variant]
    read = _cifar_reader(Path(path), layout, _EXPECTED[variant])

    train = [_cifar_batch(read(name), layout["label_key"], name) for name in layout["train"]]
    test_x, test_y = _cifar_batch(read(layout["test"]), layout["label_key"], layout["test"])
    meta = _unpickle(read(layout["meta"]))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, layout["names_key"])]
    return RawData(
        train_x=torch.cat([x for x, _ in train]),
        train_y=torch.cat([y for _, y in train]),
        test_x=test_x,
        test_y=test_y,
        class_names=names,
    )


def _find_cifar(path: Path, layout: dict) -> Path | None:
    """The batches folder or the archive that ``path`` points at or contains, if any."""
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path, path / layout["folder"]):
            if (candidate / layout["test"]).is_file():
                return candidate
        if (path / layout["archive"]).is_file():
            return path / layout["archive"]
    return None


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
        raise ValueError(f"{found} is not a tar archive: expected {expected}")
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


def _unpickle(data: bytes) -> dict:
    # encoding="bytes": the official files were pickled by Python 2, so their str keys load as bytes.
    return pickle.load(io.BytesIO(data), encoding="bytes")


def _get(d: dict, key: str):
    """A value by its key as bytes (official files) or str (files re-pickled by Python 3)."""
    if key.encode() in d:
        return d[key.encode()]
    if key in d:
        return d[key]
    raise ValueError(f"CIFAR file lacks the key {key!r}; has {sorted(map(repr, d))}")


def _cifar_batch(data: bytes, label_key: str, name: str) -> tuple[Tensor, Tensor]:
    """One batch file: rows of 3072 bytes (1024 red, then green, then blue, each row-major 32x32)."""
    batch = _unpickle(data)
    pixels = np.asarray(_get(batch, "data"), dtype=np.uint8)
    if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR file {name}: expected data of shape (N, 3072), got {pixels.shape}")
    labels = np.asarray(_get(batch, label_key), dtype=np.int64)
    if labels.shape != (pixels.shape[0],):
        raise ValueError(f"CIFAR file {name}: {pixels.shape[0]} images but {labels.shape} labels")
    x = torch.from_numpy(pixels.reshape(-1, 3, 32, 32).copy())  # copy: frombuffer data is read-only
    return x, torch.from_numpy(labels)


# ----------------------------------------------------------------------------- batches
def epoch_batches(
    num_samples: int,
    batch_size: int,
    *,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> list[Tensor]:
    """This rank's batches of sample indices for one epoch.

    Every rank draws the same permutation (seeded by ``seed`` and ``epoch`` only), drops the tail
    so it divides evenly (DDP needs the same number of steps on every rank), and takes every
    ``world_size``-th index starting at ``rank``; the ranks' index sets are disjoint. The last
    batch may be smaller than ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    generator = torch.Generator().manual_seed(_seed63(seed * 1_000_003 + epoch))
    perm = torch.randperm(num_samples, generator=generator)
    per_rank = num_samples // world_size
    mine = perm[: per_rank * world_size][rank::world_size]
    return list(torch.split(mine, batch_size))


# ----------------------------------------------------------------------------- augmentation
def augment_batch(
    x: Tensor,
    augmentations: list,
    generator: torch.Generator,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Tensor:
    """Apply ``augmentations`` (spec objects, in list order) to a normalized batch ``x`` (B, C, H, W).

    Each image gets its own random draw, all from ``generator`` (same generator state, same
    output). Returns a new tensor; ``x`` is never modified. ``mean``/``std`` are the dataset's
    per-channel normalization (``SplitData.mean``/``.std``, raw pixel scale); only ``color_jitter``
    needs them, to work on raw pixel values.
    """
    if not augmentations:
        return x.clone()
    out = x  # each step below builds a new tensor, so x itself is never written to
    for aug in augmentations:
        name = getattr(aug, "name", None)
        if name == "hflip":
            out = _flip(out, aug.p, -1, generator)
        elif name == "vflip":
            out = _flip(out, aug.p, -2, generator)
        elif name == "random_crop":
            out = _random_crop(out, aug.padding, generator)
        elif name == "rotation":
            angle = _uniform(out, generator, -aug.degrees, aug.degrees)
            out = _affine(out, angle_deg=angle)
        elif name == "affine":
            b, _, h, w = out.shape
            u = torch.rand(4, b, generator=generator, device=generator.device).to(out.device, out.dtype)
            out = _affine(
                out,
                translate_px=((2 * u[0] - 1) * aug.translate * w, (2 * u[1] - 1) * aug.translate * h),
                scale=aug.scale[0] + u[2] * (aug.scale[1] - aug.scale[0]),
                shear_deg=(2 * u[3] - 1) * aug.shear,
            )
        elif name == "color_jitter":
            if mean is None or std is None:
                raise ValueError(
                    "color_jitter works on raw pixel values and needs the dataset's per-channel mean "
                    "and std: augment_batch(x, augmentations, generator, mean=data.mean, std=data.std)"
                )
            out = _color_jitter(out, aug, generator, mean, std)
        else:
            raise ValueError(
                f"unknown augmentation {aug!r}; expected hflip, vflip, random_crop, rotation, affine "
                "or color_jitter"
            )
    return out


def _uniform(x: Tensor, generator: torch.Generator, lo: float, hi: float) -> Tensor:
    """One draw per image, uniform in [lo, hi), on x's device and dtype."""
    u = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device, x.dtype)
    return lo + u * (hi - lo)


def _flip(x: Tensor, p: float, dim: int, generator: torch.Generator) -> Tensor:
    """Mirror each image along ``dim`` (-1: left-right, -2: upside down) with probability ``p``."""
    draw = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device)
    flip = (draw < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(dim), x)


def _random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad each side by ``padding`` pixels, then cut a random H x W window per image.

    The batch is already normalized, so the zero padding is the training mean colour rather than
    black; for the purpose of this augmentation (small translations) that makes no difference.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
    # Top-left corner of each image's window, in [0, 2 * padding] (inclusive).
    dy, dx = torch.randint(
        0, 2 * padding + 1, (2, b), generator=generator, device=generator.device
    ).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H) padded row of each output row
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    # Advanced indexing broadcasts the four index tensors to (B, C, H, W).
    return padded[batch, channel, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def _affine(
    x: Tensor,
    *,
    angle_deg: Tensor | float = 0.0,
    translate_px: tuple[Tensor | float, Tensor | float] = (0.0, 0.0),
    scale: Tensor | float = 1.0,
    shear_deg: Tensor | float = 0.0,
) -> Tensor:
    """Warp every image by its own affine map about the image centre, in one grid_sample call.

    Per image (each argument a scalar or a (B,) tensor): scale by ``scale``, shear along x by
    ``shear_deg``, rotate counter-clockwise (as displayed: y points down) by ``angle_deg``, then
    shift by ``translate_px`` = (right, down) pixels. Bilinear interpolation; pixels that come from
    outside the image are 0, which on normalized data is the training mean colour, not black.
    """
    b, _, h, w = x.shape
    as_batch = lambda v: torch.as_tensor(v, dtype=x.dtype, device=x.device).expand(b)  # noqa: E731
    angle, shear = torch.deg2rad(as_batch(angle_deg)), torch.deg2rad(as_batch(shear_deg))  # radians
    s, tx, ty = as_batch(scale), as_batch(translate_px[0]), as_batch(translate_px[1])

    # grid_sample wants, for every OUTPUT pixel, where to read in the INPUT: the inverse map
    # p_in = A^-1 (p_out - t), with A = rotate @ shear @ scale in pixel units (origin at the centre):
    #   rotate^-1 = [[cos, -sin], [sin, cos]],  shear^-1 = [[1, -tan], [0, 1]],  scale^-1 = 1/s.
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    a00, a01 = (cos - tan * sin) / s, (-sin - tan * cos) / s
    a10, a11 = sin / s, cos / s
    # affine_grid works in normalized coordinates: x_px = x_norm * W/2, y_px = y_norm * H/2
    # (align_corners=False). Converting A^-1 keeps angles right on non-square images.
    l00, l01, l10, l11 = a00, a01 * (h / w), a10 * (w / h), a11
    tnx, tny = tx / (w / 2), ty / (h / 2)  # the shift in normalized units
    theta = torch.stack(
        [
            torch.stack([l00, l01, -(l00 * tnx + l01 * tny)], dim=1),
            torch.stack([l10, l11, -(l10 * tnx + l11 * tny)], dim=1),
        ],
        dim=1,
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ITU-R 601 luma weights (as torchvision's rgb_to_grayscale) for R, G, B.
_LUMA = (0.299, 0.587, 0.114)


def _color_jitter(x: Tensor, aug, generator: torch.Generator, mean, std) -> Tensor:
    """Per-image brightness, contrast, saturation factors uniform in [1 - x, 1 + x], in that order.

    Colour operations only mean something on raw pixel values, so the batch is un-normalized
    with the dataset's ``mean``/``std``, jittered, and normalized again. As in torchvision:
    brightness scales the pixels, contrast blends each image with its mean grey level, saturation
    blends it with its own greyscale version (3-channel images only; a no-op otherwise). Unlike
    torchvision, results are not clipped to [0, 1]: we do not know the raw range of every dataset
    (synthetic data is unbounded), and a slightly out-of-range input is harmless to the model.
    """
    b, c = x.shape[:2]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"color_jitter: mean/std have {len(mean)}/{len(std)} entries for {c} channels")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    sd = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    spread = torch.tensor([aug.brightness, aug.contrast, aug.saturation], dtype=x.dtype, device=x.device)
    u = torch.rand(3, b, generator=generator, device=generator.device).to(x.device, x.dtype)
    brightness, contrast, saturation = (1 + (2 * u - 1) * spread[:, None]).view(3, b, 1, 1, 1)

    raw = x * sd + m  # back to raw pixel values
    raw = raw * brightness
    grey_level = _grey(raw).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    raw = grey_level + contrast * (raw - grey_level)
    if c == 3:
        grey = _grey(raw)  # (B, 1, H, W)
        raw = grey + saturation * (raw - grey)
    return (raw - m) / sd


def _grey(raw: Tensor) -> Tensor:
    """(B, 1, H, W) grey level: luma for RGB, the channel mean otherwise."""
    if raw.shape[1] == 3:
        weights = torch.tensor(_LUMA, dtype=raw.dtype, device=raw.device).view(1, 3, 1, 1)
        return (raw * weights).sum(dim=1, keepdim=True)
    return raw.mean(dim=1, keepdim=True)
