"""The seeded train/val split of the official training set, ``SplitData``, per-epoch batches.

All randomness comes from generators seeded by the arguments, never torch's global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SplitData:
    """A dataset ready for training: train/val/test images as held, their labels, the train split's stats.

    Images are held in the dataset's own dtype (``*_images``): uint8 pixels 0..255 for CIFAR and
    MNIST, a quarter of float32's bytes (CIFAR-10's 50,000 training images: 153.6 MB instead of
    614.4 MB, on every device a trial puts them on); digits and synthetic data are float already
    and are held normalized. ``normalize`` turns a batch of held images into the float32 batch
    the model trains on, bit for bit what normalizing the whole split as float32 once would give
    (tests/trainer/test_data.py). ``train_x``/``val_x``/``test_x`` are whole normalized splits,
    for callers outside the training loop (evaluation, export, tests).
    """

    train_images: Tensor  # (N, C, H, W): uint8 pixels, or float32 already normalized (see above)
    train_y: Tensor  # int64 (N,)
    val_images: Tensor
    val_y: Tensor
    test_images: Tensor  # the official test split (or a fixed held-out part)
    test_y: Tensor
    train_indices: Tensor  # int64 indices into the official training split that form train
    val_indices: Tensor  # ... that form val (disjoint from train_indices; together all of it)
    class_names: list[str]
    mean: tuple[float, ...]  # per channel, in the raw float scale (e.g. [0, 1] for CIFAR)
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_images.shape[1:]
        return (c, h, w)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_x(self) -> Tensor:
        """The whole train split, float32, normalized per channel with the train split's mean/std."""
        return self.normalizer(self.train_images.device)(self.train_images)

    @property
    def val_x(self) -> Tensor:
        return self.normalizer(self.val_images.device)(self.val_images)

    @property
    def test_x(self) -> Tensor:
        return self.normalizer(self.test_images.device)(self.test_images)

    def normalizer(self, device) -> "Normalizer":
        """What turns a batch of held images on ``device`` into model input (float32, normalized)."""
        return Normalizer(self.mean, self.std, device, raw=self.train_images.dtype == torch.uint8)

    @property
    def resident_bytes(self) -> int:
        """Bytes a trial holds on its device: the train and val images and labels (test stays out)."""
        return sum(t.element_size() * t.nelement() for t in (self.train_images, self.train_y, self.val_images, self.val_y))


class Normalizer:
    """uint8 pixels → float32 in [0, 1] → minus the train mean, over the train std, per channel.

    The very operations, in the same order and precision, that ``load_dataset`` used to apply to
    the whole split at once (``x.to(float32).div_(255)``, then ``sub_(mean).div_(std)``), so a
    normalized batch is bit-identical to the same rows of the normalized split. Float images are
    held normalized already: returned as they are (no copy, as indexing made one).
    """

    def __init__(self, mean, std, device, *, raw: bool):
        self.raw = raw
        # float32 → Python float → float32 round-trips exactly: these are the statistics' own values.
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32, device=device)[:, None, None]

    def __call__(self, images: Tensor) -> Tensor:
        if not self.raw:
            return images
        return images.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)


def split_indices(num_samples: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random train/val split of ``range(num_samples)``: ``(train_indices, val_indices)``.

    Deterministic given the arguments; uses its own generator (never the global RNG). The val
    part has ``round(num_samples * val_fraction)`` indices, at least 1; both parts are sorted.
    """
    num_val = _num_val(num_samples, val_fraction)
    generator = torch.Generator().manual_seed(seed63(seed))
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
    generator = torch.Generator().manual_seed(seed63(seed))
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


def seed63(value: int) -> int:
    """Fold any Python int into the range torch.Generator.manual_seed accepts."""
    return value % (2**63)


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
    generator = torch.Generator().manual_seed(seed63(seed * 1_000_003 + epoch))
    perm = torch.randperm(num_samples, generator=generator)
    per_rank = num_samples // world_size
    mine = perm[: per_rank * world_size][rank::world_size]
    return list(torch.split(mine, batch_size))
