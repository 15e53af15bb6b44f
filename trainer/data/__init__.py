"""Datasets as in-memory tensors: loading, the seeded train/val split, per-epoch batches, augmentation.

Every dataset we sweep over is small enough to keep whole in memory, in its own dtype (CIFAR-10's
50,000 training images as uint8: 153.6 MB; as float32 they were 614.4 MB), so there is no
DataLoader and no per-sample PIL transform: a training step indexes a tensor with a batch of
indices, normalizes it (``SplitData.normalizer``) and augments it in one vectorized call. That keeps a trial's
data path fast on CPU and, more importantly, exactly reproducible from ``seed``:

* ``split_indices`` / ``stratified_split_indices`` fix which images of the official training
  split are train and which are val;
* ``epoch_batches`` fixes each epoch's order, identically on every DDP rank;
* ``augment_batch`` draws all of its randomness from a caller-owned ``torch.Generator``.

None of these touch torch's global RNG, so model initialisation (seeded by the training loop) is
unaffected by how much data randomness was consumed before it.

The parts: ``formats`` reads the official files (``RawData``), ``splits`` splits and batches
(``SplitData``), ``augment`` augments batches; ``load_dataset`` below joins them. s3:// paths
are fetched by ``service.core.fetch``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from service.core.spec import DataSpec
# The package's public names, for `from trainer.data import ...` (some only re-exported).
from trainer.data.augment import augment_batch
from trainer.data.formats import (
    FASHION_MNIST_CLASSES,
    Downloader,
    RawData,
    read_cifar,
    read_mnist,
    read_raw,
    torchvision_download,
)
from trainer.data.splits import SplitData, epoch_batches, split_indices, stratified_split_indices


def load_dataset(spec: DataSpec, seed: int, *, downloader: Downloader | None = None) -> SplitData:
    """Load ``spec.name``, split its official training set into train/val by ``seed``, normalize.

    Normalization statistics come from the train part only, so nothing about the val or test
    images leaks into training; val and test are normalized with those same statistics.
    ``downloader`` (default ``torchvision_download``) is used only when ``spec.download`` is set
    and the files are missing at ``spec.path``.
    """
    raw = read_raw(spec, seed, downloader or torchvision_download)
    if spec.val_split == "stratified":
        train_idx, val_idx = stratified_split_indices(raw.train_y, spec.val_fraction, seed)
    else:
        train_idx, val_idx = split_indices(len(raw.train_y), spec.val_fraction, seed)
    # Index the raw (uint8 for CIFAR/MNIST) images first and convert each part separately, so no
    # float32 copy of the whole official split is ever made. The statistics come from a float32
    # copy of the train part (as every version computed them); uint8 images are then held as they
    # are and normalized per batch (SplitData.normalizer), float ones are held normalized.
    train_float = _to_float(raw.train_x[train_idx])
    std, mean = torch.std_mean(train_float, dim=(0, 2, 3), correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: only centre it
    if raw.train_x.dtype == torch.uint8:
        del train_float  # 4 bytes a pixel, only ever needed for the statistics
        train_x, val_x, test_x = raw.train_x[train_idx], raw.train_x[val_idx], raw.test_x.clone()
    else:
        train_x, val_x, test_x = train_float, _to_float(raw.train_x[val_idx]), _to_float(raw.test_x)
        for x in (train_x, val_x, test_x):
            x.sub_(mean[:, None, None]).div_(std[:, None, None])  # our own fresh copies: in place is fine

    return SplitData(
        train_images=train_x,
        train_y=raw.train_y[train_idx],
        val_images=val_x,
        val_y=raw.train_y[val_idx],
        test_images=test_x,
        test_y=raw.test_y.clone(),
        train_indices=train_idx,
        val_indices=val_idx,
        class_names=list(raw.class_names),
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
    )


def _to_float(x: Tensor) -> Tensor:
    """uint8 pixels (0..255) to float32 in [0, 1]; float images are copied as float32."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32, copy=True)
