"""Datasets as in-memory tensors: loading, the seeded train/val split, per-epoch batches, augmentation.

Every dataset we sweep over is small enough to keep whole in memory (CIFAR-10 as float32 is about
600 MB), so there is no DataLoader and no per-sample PIL transform: a training step indexes a
tensor with a batch of indices and augments the batch in one vectorized call. That keeps a trial's
data path fast on CPU and, more importantly, exactly reproducible from ``seed``:

* ``split_indices`` fixes which images of the official training split are train and which are val;
* ``epoch_batches`` fixes each epoch's order, identically on every DDP rank;
* ``augment_batch`` draws all of its randomness from a caller-owned ``torch.Generator``.

None of these touch torch's global RNG, so model initialisation (seeded by the training loop) is
unaffected by how much data randomness was consumed before it.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from service.spec import DataSpec, HFlip, RandomCrop

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

    Images are NCHW. CIFAR images are uint8 in 0..255 (as stored); digits and synthetic images are
    already float32 (digits scaled to [0, 1]). ``load_dataset`` converts either to float32.
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


# ----------------------------------------------------------------------------- loading
def load_dataset(spec: DataSpec, seed: int) -> SplitData:
    """Load ``spec.name``, split its official training set into train/val by ``seed``, normalize.

    Normalization statistics come from the train part only, so nothing about the val or test
    images leaks into training; val and test are normalized with those same statistics.
    """
    loaders: dict[str, Callable[[], RawData]] = {
        "synthetic": lambda: _synthetic(spec, seed),
        "digits": _digits,
        "cifar10": lambda: read_cifar(_required_path(spec), "cifar10"),
        "cifar100": lambda: read_cifar(_required_path(spec), "cifar100"),
    }
    if spec.name not in loaders:
        raise ValueError(f"unknown dataset {spec.name!r}; expected one of {sorted(loaders)}")
    raw = loaders[spec.name]()

    train_idx, val_idx = split_indices(len(raw.train_y), spec.val_fraction, seed)
    # Index the raw (uint8 for CIFAR) images first and convert each part separately, so no
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
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    num_val = max(1, round(num_samples * val_fraction))
    if num_val >= num_samples:
        raise ValueError(
            f"cannot split {num_samples} samples with val_fraction={val_fraction}: "
            f"val would take {num_val}, leaving no training samples"
        )
    generator = torch.Generator().manual_seed(_seed63(seed))
    perm = torch.randperm(num_samples, generator=generator)
    return perm[num_val:].sort().values, perm[:num_val].sort().values


def _required_path(spec: DataSpec) -> str:
    if not spec.path:
        raise ValueError(f"data.path is required for {spec.name}")
    return spec.path


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
    read = _cifar_reader(Path(path), layout)

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


def _cifar_reader(path: Path, layout: dict) -> Callable[[str], bytes]:
    """A function returning the bytes of one file of the dataset, wherever ``path`` points."""
    folder, archive, probe = layout["folder"], layout["archive"], layout["test"]
    expected = (
        f"expected the '{folder}' folder, a directory containing it or {archive}, or {archive} itself"
    )
    if path.is_dir():
        for candidate in (path, path / folder):
            if (candidate / probe).is_file():
                return lambda name, d=candidate: _read_file(d / name)
        if (path / archive).is_file():
            path = path / archive
        else:
            raise FileNotFoundError(f"no CIFAR data found in {path}: {expected}")
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise ValueError(f"{path} is not a tar archive: {expected}")
        return _tar_reader(path, folder, [*layout["train"], probe, layout["meta"]])
    raise FileNotFoundError(f"{path} does not exist: {expected}")


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
def augment_batch(x: Tensor, augmentations: list, generator: torch.Generator) -> Tensor:
    """Apply ``augmentations`` (HFlip / RandomCrop specs, in order) to a batch ``x`` of (B, C, H, W).

    Each image gets its own random draw, all from ``generator`` (same generator state, same
    output). Returns a new tensor; ``x`` is never modified.
    """
    if not augmentations:
        return x.clone()
    out = x  # each step below builds a new tensor, so x itself is never written to
    for aug in augmentations:
        if isinstance(aug, HFlip) or getattr(aug, "name", None) == "hflip":
            out = _hflip(out, aug.p, generator)
        elif isinstance(aug, RandomCrop) or getattr(aug, "name", None) == "random_crop":
            out = _random_crop(out, aug.padding, generator)
        else:
            raise ValueError(f"unknown augmentation {aug!r}; expected hflip or random_crop")
    return out


def _hflip(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability ``p``."""
    draw = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device)
    flip = (draw < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


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
