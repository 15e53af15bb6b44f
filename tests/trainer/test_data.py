"""Behaviour of trainer.data: dataset readers (CIFAR, MNIST), download: true, the seeded splits,
load_dataset, batches, augmentation. The s3:// cache is tested in test_data_s3.py."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from official_formats import (
    IDX_FILES,
    assert_matches,
    assert_mnist_matches,
    idx_bytes,
    make_tar,
    write_cifar10,
    write_cifar100,
    write_mnist,
)
from service.core.spec import Affine, ColorJitter, data_spec, HFlip, RandomCrop, Rotation, VFlip
from trainer.data import (
    FASHION_MNIST_CLASSES,
    augment_batch,
    epoch_batches,
    load_dataset,
    read_cifar,
    read_mnist,
    split_indices,
    stratified_split_indices,
)


# ----------------------------------------------------------------------------- CIFAR readers
def test_cifar10_from_folder_parent_and_tar(tmp_path):
    written = write_cifar10(tmp_path / "data")
    archive = make_tar(written["folder"], tmp_path / "cifar-10-python.tar.gz")
    for path in (written["folder"], tmp_path / "data", archive, str(archive)):
        raw = read_cifar(path, "cifar10")
        assert_matches(raw, written)
        assert raw.test_x[1, 1, 5, 7] == 201  # channel planes R,G,B; each row-major 32x32


def test_cifar10_tar_in_parent_directory(tmp_path):
    written = write_cifar10(tmp_path / "src")
    (tmp_path / "dl").mkdir()
    make_tar(written["folder"], tmp_path / "dl" / "cifar-10-python.tar.gz")
    assert_matches(read_cifar(tmp_path / "dl", "cifar10"), written)


def test_cifar100_uses_fine_labels(tmp_path):
    written = write_cifar100(tmp_path / "data")
    archive = make_tar(written["folder"], tmp_path / "cifar-100-python.tar.gz")
    for path in (written["folder"], tmp_path / "data", archive):
        raw = read_cifar(path, "cifar100")
        assert_matches(raw, written)
        assert raw.train_x[0, 2, 31, 0] == 77
        assert len(raw.class_names) == 100


def test_cifar_wrong_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        read_cifar(tmp_path / "missing", "cifar10")
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        read_cifar(tmp_path, "cifar100")  # exists, but holds no dataset
    write_cifar10(tmp_path / "c10")
    with pytest.raises(FileNotFoundError):
        read_cifar(tmp_path / "c10", "cifar100")  # the other variant's layout
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="not a tar archive"):
        read_cifar(junk, "cifar10")


def test_load_dataset_cifar10_end_to_end(tmp_path):
    write_cifar10(tmp_path, per_batch=4)
    data = load_dataset(data_spec(name="cifar10", path=str(tmp_path), val_fraction=0.25), seed=0)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert len(data.train_y) == 15 and len(data.val_y) == 5 and len(data.test_y) == 4
    assert data.train_x.dtype == torch.float32


# ----------------------------------------------------------------------------- split
def test_split_is_seeded_disjoint_and_complete():
    train, val = split_indices(1000, 0.1, seed=3)
    again_train, again_val = split_indices(1000, 0.1, seed=3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert not torch.equal(val, split_indices(1000, 0.1, seed=4)[1])
    assert train.dtype == val.dtype == torch.int64
    assert len(val) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))


def test_split_sizes_round_and_keep_one():
    assert len(split_indices(1797, 0.2, seed=0)[1]) == round(1797 * 0.2)
    assert len(split_indices(10, 0.01, seed=0)[1]) == 1  # round(0.1) = 0 -> at least 1


def test_split_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    split_indices(500, 0.2, seed=9)
    assert torch.equal(torch.rand(3), expected)


# ----------------------------------------------------------------------------- load_dataset
@pytest.fixture(scope="module")
def digits():
    spec = data_spec(name="digits", val_fraction=0.1)
    return load_dataset(spec, seed=0), load_dataset(spec, seed=0), load_dataset(spec, seed=1)


def test_digits_shapes_and_classes(digits):
    data, _, _ = digits
    assert data.input_shape == (1, 8, 8)
    assert data.num_classes == 10 and data.class_names == [str(i) for i in range(10)]
    n_official = len(data.train_y) + len(data.val_y)
    assert n_official + len(data.test_y) == 1797
    assert len(data.val_y) == round(n_official * 0.1)
    for x in (data.train_x, data.val_x, data.test_x):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
    assert data.train_y.dtype == torch.int64
    assert set(data.train_y.tolist()) == set(range(10))


def test_digits_normalized_with_train_stats(digits):
    data, _, _ = digits
    assert torch.allclose(data.train_x.mean(dim=(0, 2, 3)), torch.zeros(1), atol=1e-4)
    assert torch.allclose(data.train_x.std(dim=(0, 2, 3)), torch.ones(1), atol=1e-3)
    assert len(data.mean) == len(data.std) == 1 and 0 < data.mean[0] < 1


def test_digits_test_set_fixed_and_split_seeded(digits):
    first, same_seed, other_seed = digits
    assert torch.equal(first.test_y, other_seed.test_y)
    # Normalization stats differ slightly between seeds; undo them to compare raw pixels.
    def raw(d):
        return d.test_x * torch.tensor(d.std).view(1, -1, 1, 1) + torch.tensor(d.mean).view(1, -1, 1, 1)

    assert torch.allclose(raw(first), raw(other_seed), atol=1e-5)
    assert torch.equal(first.val_indices, same_seed.val_indices)
    assert torch.equal(first.train_x, same_seed.train_x)
    assert not torch.equal(first.val_indices, other_seed.val_indices)
    assert set(first.train_indices.tolist()).isdisjoint(first.val_indices.tolist())


def test_synthetic_deterministic_and_learnable_shape():
    spec = data_spec(name="synthetic", num_samples=200, image_size=12, channels=2, num_classes=4)
    a, b = load_dataset(spec, seed=5), load_dataset(spec, seed=5)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, load_dataset(spec, seed=6).train_x)
    assert a.input_shape == (2, 12, 12) and a.num_classes == 4
    assert len(a.train_y) + len(a.val_y) == 200 and len(a.test_y) == 50
    assert set(a.train_y.tolist()) == set(range(4))


def test_synthetic_is_learnable():
    """A small MLP trained for 3 epochs reaches >90% val accuracy (the dataset's purpose)."""
    data = load_dataset(data_spec(name="synthetic"), seed=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(768, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(3):
        for idx in epoch_batches(len(data.train_y), 64, epoch=epoch, seed=0):
            loss = torch.nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model(data.val_x).argmax(1) == data.val_y).float().mean().item()
    assert accuracy > 0.9


# ----------------------------------------------------------------------------- epoch_batches
def test_epoch_batches_ranks_disjoint_and_equal():
    n = 101
    ranks = [epoch_batches(n, 16, epoch=2, seed=7, rank=r, world_size=2) for r in range(2)]
    flat = [torch.cat(batches).tolist() for batches in ranks]
    assert len(flat[0]) == len(flat[1]) == n // 2
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]] == [16, 16, 16, 2]
    assert set(flat[0]).isdisjoint(flat[1])
    assert all(0 <= i < n for i in flat[0] + flat[1])


def test_epoch_batches_single_rank_covers_everything():
    batches = epoch_batches(50, 8, epoch=0, seed=1)
    assert sorted(torch.cat(batches).tolist()) == list(range(50))


def test_epoch_batches_seeded_per_epoch():
    same = [torch.cat(epoch_batches(64, 10, epoch=3, seed=1)) for _ in range(2)]
    assert torch.equal(same[0], same[1])
    other_epoch = torch.cat(epoch_batches(64, 10, epoch=4, seed=1))
    other_seed = torch.cat(epoch_batches(64, 10, epoch=3, seed=2))
    assert not torch.equal(same[0], other_epoch)
    assert not torch.equal(same[0], other_seed)


# ----------------------------------------------------------------------------- augment_batch
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_reproducible_and_input_unchanged():
    x = torch.randn(16, 3, 10, 12)
    before = x.clone()
    augs = [HFlip(name="hflip"), RandomCrop(name="random_crop", padding=2)]
    a = augment_batch(x, augs, _gen(0))
    b = augment_batch(x, augs, _gen(0))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment_batch(x, augs, _gen(1)))
    assert torch.equal(x, before)
    assert a.shape == x.shape


def test_hflip_probabilities():
    x = torch.randn(32, 2, 5, 7)
    assert torch.equal(augment_batch(x, [HFlip(name="hflip", p=1.0)], _gen(0)), torch.flip(x, dims=[-1]))
    assert torch.equal(augment_batch(x, [HFlip(name="hflip", p=0.0)], _gen(0)), x)
    out = augment_batch(x, [HFlip(name="hflip", p=0.5)], _gen(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_random_crop_is_a_window_of_the_padded_image():
    pad = 3
    x = torch.randn(16, 3, 9, 11)  # non-square, odd sizes: any C, H, W must work
    out = augment_batch(x, [RandomCrop(name="random_crop", padding=pad)], _gen(4))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 9, dx : dx + 11])
        ]
        assert len(matches) == 1, f"image {i} is not a window of its padded input"
        offsets.add(matches[0])
    assert len(offsets) > 1  # each image draws its own offset


def test_no_augmentation_returns_a_copy():
    x = torch.randn(4, 1, 8, 8)
    out = augment_batch(x, [], _gen(0))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST
def test_mnist_idx_plain_and_gzipped(tmp_path):
    for gz in (False, True):
        folder = tmp_path / ("gz" if gz else "plain")
        written = write_mnist(folder, gz=gz)
        assert any(f.name.endswith(".gz") for f in folder.iterdir()) == gz
        raw = read_mnist(folder, "mnist")
        assert_mnist_matches(raw, written)
        assert raw.train_x[3, 0, 27, 0] == 201  # (N, 1, rows, cols), row-major as stored
        assert raw.class_names == [str(i) for i in range(10)]


def test_fashion_mnist_in_torchvision_layout_with_official_names(tmp_path):
    written = write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True, seed=1)
    raw = read_mnist(tmp_path, "fashion_mnist")
    assert_mnist_matches(raw, written)
    assert raw.class_names == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]  # fmt: skip
    assert raw.class_names == FASHION_MNIST_CLASSES
    with pytest.raises(FileNotFoundError, match="MNIST/raw"):
        read_mnist(tmp_path, "mnist")  # torchvision keeps MNIST under MNIST/raw, not FashionMNIST/raw


def test_mnist_bad_header_is_a_clear_error(tmp_path):
    write_mnist(tmp_path)
    labels = tmp_path / IDX_FILES["train_y"]
    good_labels = labels.read_bytes()
    # The images file where the labels belong: magic 0x803 instead of 0x801.
    labels.write_bytes((tmp_path / IDX_FILES["train_x"]).read_bytes())
    with pytest.raises(ValueError, match="bad idx magic number 0x00000803, expected 0x00000801"):
        read_mnist(tmp_path, "mnist")
    labels.write_bytes(good_labels[:-1])  # one label short of what the header says
    with pytest.raises(ValueError, match="header says dims"):
        read_mnist(tmp_path, "mnist")
    labels.write_bytes(good_labels)
    (tmp_path / IDX_FILES["test_x"]).write_bytes(idx_bytes(np.zeros((5, 28, 27), np.uint8), 0x803))
    with pytest.raises(ValueError, match="28x28"):
        read_mnist(tmp_path, "mnist")


def test_load_dataset_mnist_end_to_end(tmp_path):
    write_mnist(tmp_path, gz=True, num_train=20, num_test=6)
    data = load_dataset(data_spec(name="mnist", path=f"file://{tmp_path}", val_fraction=0.25), seed=0)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.train_y) == 15 and len(data.val_y) == 5 and len(data.test_y) == 6
    assert data.train_x.dtype == torch.float32 and len(data.mean) == 1


# ----------------------------------------------------------------------------- download: true
class FakeTorchvision:
    """Stands in for torchvision's downloader only: writes the official files in torchvision's layout."""

    def __init__(self, write=True):
        self.calls = []
        self.write = write

    def __call__(self, name: str, root: Path) -> None:
        self.calls.append((name, root))
        if not self.write:
            return
        if name in ("mnist", "fashion_mnist"):
            folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]
            write_mnist(root / folder / "raw", gz=True)
        else:  # torchvision keeps the archive and extracts it next to it
            written = write_cifar10(root)
            make_tar(written["folder"], root / "cifar-10-python.tar.gz")


def test_download_fetches_missing_files_once(tmp_path):
    spec = data_spec(name="fashion_mnist", path=str(tmp_path / "data"), download=True)
    downloader = FakeTorchvision()
    first = load_dataset(spec, seed=0, downloader=downloader)
    assert downloader.calls == [("fashion_mnist", tmp_path / "data")]
    assert first.class_names == FASHION_MNIST_CLASSES and first.input_shape == (1, 28, 28)
    again = load_dataset(spec, seed=0, downloader=downloader)  # files present now: read only
    assert len(downloader.calls) == 1
    assert torch.equal(first.train_x, again.train_x)


def test_download_cifar10_then_read_with_our_reader(tmp_path):
    downloader = FakeTorchvision()
    spec = data_spec(name="cifar10", path=str(tmp_path / "c10"), download=True, val_fraction=0.2)
    data = load_dataset(spec, seed=0, downloader=downloader)
    assert [name for name, _ in downloader.calls] == ["cifar10"]
    assert data.input_shape == (3, 32, 32) and len(data.train_y) + len(data.val_y) == 15


def test_present_files_are_never_downloaded(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw")
    downloader = FakeTorchvision()
    load_dataset(data_spec(name="mnist", path=str(tmp_path), download=True), seed=0, downloader=downloader)
    assert downloader.calls == []


def test_missing_files_without_download_say_what_to_do(tmp_path):
    downloader = FakeTorchvision()
    for name in ("mnist", "cifar100"):
        with pytest.raises(FileNotFoundError, match=r"no .* files at .*set data.download: true"):
            load_dataset(data_spec(name=name, path=str(tmp_path / "nothing")), seed=0, downloader=downloader)
    assert downloader.calls == []


def test_download_that_leaves_no_files_is_an_error(tmp_path):
    spec = data_spec(name="mnist", path=str(tmp_path / "data"), download=True)
    with pytest.raises(FileNotFoundError, match="finished, but the files are still missing"):
        load_dataset(spec, seed=0, downloader=FakeTorchvision(write=False))


# ----------------------------------------------------------------------------- stratified split
def test_stratified_split_keeps_class_proportions():
    counts = [500, 301, 150, 47, 3, 1]  # imbalanced, including classes too small for a fair share
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    fraction = 0.15
    train, val = stratified_split_indices(labels, fraction, seed=3)
    assert len(val) == round(len(labels) * fraction)  # the same val size as the random split
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    val_counts = torch.bincount(labels[val], minlength=len(counts))
    for c, n in enumerate(counts):
        assert abs(val_counts[c].item() - n * fraction) < 1, (c, val_counts.tolist())

    again = stratified_split_indices(labels, fraction, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    assert not torch.equal(stratified_split_indices(labels, fraction, seed=4)[1], val)


def test_load_dataset_stratified_val_split(digits):
    random_split = digits[0]
    spec = data_spec(name="digits", val_fraction=0.1, val_split="stratified")
    data = load_dataset(spec, seed=0)
    assert len(data.val_y) == len(random_split.val_y)
    all_y = torch.cat([data.train_y, data.val_y])
    expected = torch.bincount(all_y, minlength=10).double() * 0.1
    assert (torch.bincount(data.val_y, minlength=10) - expected).abs().max() < 1
    assert set(data.train_indices.tolist()).isdisjoint(data.val_indices.tolist())


# ----------------------------------------------------------------------------- new augmentations
RAW_STATS = {1: ((0.13,), (0.31,)), 2: ((0.4, 0.6), (0.2, 0.3)), 3: ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))}
NEW_AUGMENTATIONS = [
    VFlip(name="vflip"),
    Rotation(name="rotation", degrees=30),
    Affine(name="affine", translate=0.2, scale=(0.8, 1.2), shear=10),
    ColorJitter(name="color_jitter", brightness=0.4, contrast=0.4, saturation=0.4),
]


@pytest.mark.parametrize("shape", [(6, 1, 9, 13), (6, 3, 8, 8), (5, 2, 7, 5)])
@pytest.mark.parametrize("aug", NEW_AUGMENTATIONS, ids=lambda a: a.name)
def test_new_augmentations_reproducible_shape_kept_input_untouched(aug, shape):
    x = torch.randn(shape)
    before = x.clone()
    mean, std = RAW_STATS[shape[1]]
    a = augment_batch(x, [aug], _gen(0), mean, std)
    assert torch.equal(a, augment_batch(x, [aug], _gen(0), mean, std))
    assert not torch.equal(a, augment_batch(x, [aug], _gen(1), mean, std))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(x, before)


def test_vflip_probabilities():
    x = torch.randn(16, 3, 5, 7)
    assert torch.equal(augment_batch(x, [VFlip(name="vflip", p=1.0)], _gen(0)), torch.flip(x, dims=[-2]))
    assert torch.equal(augment_batch(x, [VFlip(name="vflip", p=0.0)], _gen(0)), x)
    out = augment_batch(x, [VFlip(name="vflip", p=0.5)], _gen(0))
    flipped = [torch.equal(o, i.flip(-2)) for o, i in zip(out, x)]
    assert any(flipped) and not all(flipped)
    assert all(f or torch.equal(o, i) for f, o, i in zip(flipped, out, x))


def test_affine_without_movement_is_identity():
    x = torch.randn(8, 3, 9, 13)
    still = Affine(name="affine", translate=0, scale=(1, 1), shear=0)
    # float32 grid coordinates are off by ~1e-7 pixel, hence not bit-exact.
    torch.testing.assert_close(augment_batch(x, [still], _gen(0)), x, atol=1e-5, rtol=0)


def _blob(n: int, h: int, w: int, dx: float, dy: float) -> torch.Tensor:
    """n copies of a Gaussian spot (sigma 1.5 px) at (dx right, dy down) of the image centre."""
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    spot = torch.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * 1.5**2))
    return spot.expand(n, 1, h, w).clone()


def _centroids(images: torch.Tensor) -> torch.Tensor:
    """(n, 2) intensity centroid (right, down) of each single-channel image, from the centre, pixels."""
    h, w = images.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    mass = images.sum(dim=(1, 2, 3))
    return torch.stack([(images * xx).sum(dim=(1, 2, 3)) / mass, (images * yy).sum(dim=(1, 2, 3)) / mass], 1)


def test_rotation_turns_images_about_their_centre():
    # A non-square image: a rotation computed in affine_grid's normalized coordinates without the
    # aspect-ratio correction would move the spot off its circle.
    out = augment_batch(_blob(32, 21, 31, dx=8, dy=0), [Rotation(name="rotation", degrees=40)], _gen(2))
    x, y = _centroids(out).T
    radius = torch.hypot(x, y)
    angle = torch.rad2deg(torch.atan2(-y, x))  # counter-clockwise as displayed (y points down)
    assert (radius - 8).abs().max() < 0.05  # stays on its circle
    assert angle.abs().max() <= 40.1 and angle.std() > 10  # each image its own angle within ±40°


def test_affine_translate_scale_and_shear_stay_in_their_ranges():
    n, h, w = 32, 21, 31
    shift = augment_batch(_blob(n, h, w, 0, 0), [Affine(name="affine", translate=0.1, scale=(1, 1))], _gen(0))
    sx, sy = _centroids(shift).T
    assert sx.abs().max() <= 0.1 * w + 0.01 and sy.abs().max() <= 0.1 * h + 0.01
    assert sx.std() > 0.5 and sy.std() > 0.5

    zoom = augment_batch(_blob(n, h, w, 6, 0), [Affine(name="affine", translate=0, scale=(0.8, 1.25))], _gen(0))
    zx, zy = _centroids(zoom).T
    assert zx.min() >= 0.8 * 6 - 0.05 and zx.max() <= 1.25 * 6 + 0.05 and zy.abs().max() < 0.01
    assert zx.std() > 0.2

    # x-shear moves a point below the centre sideways by tan(angle) * its height.
    sheared = augment_batch(_blob(n, h, w, 0, 6), [Affine(name="affine", translate=0, scale=(1, 1), shear=20)], _gen(0))
    hx, hy = _centroids(sheared).T
    assert hx.abs().max() <= math.tan(math.radians(20)) * 6 + 0.05 and (hy - 6).abs().max() < 0.05
    assert hx.std() > 0.3


def test_warps_pad_with_zero_the_mean_colour():
    x = torch.ones(4, 1, 10, 10)
    out = augment_batch(x, [Affine(name="affine", translate=0, scale=(0.5, 0.5))], _gen(0))
    assert torch.all(out[:, :, 0, :] == 0)  # shrunk to half size: the border comes from outside
    assert torch.allclose(out[:, :, 4:6, 4:6], torch.ones(4, 1, 2, 2))


def _raw(x, mean, std):
    return x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


def test_color_jitter_with_zero_strength_is_identity():
    for c in (1, 3):
        x = torch.randn(6, c, 5, 4)
        mean, std = RAW_STATS[c]
        none = ColorJitter(name="color_jitter", brightness=0, contrast=0, saturation=0)
        torch.testing.assert_close(augment_batch(x, [none], _gen(0), mean, std), x, atol=1e-5, rtol=0)


def test_color_jitter_works_on_raw_pixels():
    mean, std = RAW_STATS[3]
    x = (torch.rand(16, 3, 6, 6) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    raw_in = _raw(x, mean, std)

    bright = ColorJitter(name="color_jitter", brightness=0.5, contrast=0, saturation=0)
    raw_out = _raw(augment_batch(x, [bright], _gen(0), mean, std), mean, std)
    factor = raw_out / raw_in  # one factor per image, the same for every raw pixel and channel
    per_image = factor.flatten(1)
    assert (per_image - per_image[:, :1]).abs().max() < 1e-4
    assert per_image.min() >= 0.5 - 1e-4 and per_image.max() <= 1.5 + 1e-4 and per_image[:, 0].std() > 0.1

    contrast = ColorJitter(name="color_jitter", brightness=0, contrast=0.5, saturation=0)
    raw_out = _raw(augment_batch(x, [contrast], _gen(0), mean, std), mean, std)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey_mean = lambda r: (r * luma).sum(1).mean(dim=(1, 2))  # noqa: E731
    torch.testing.assert_close(grey_mean(raw_out), grey_mean(raw_in), atol=1e-5, rtol=0)  # level kept
    assert not torch.allclose(raw_out, raw_in, atol=1e-3)

    # Saturation leaves grey pixels (R = G = B) alone and changes coloured ones.
    saturation = ColorJitter(name="color_jitter", brightness=0, contrast=0, saturation=0.5)
    raw_in[:, :, :3] = raw_in[:, :1, :3]  # the top three rows grey
    x = (raw_in - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    raw_out = _raw(augment_batch(x, [saturation], _gen(0), mean, std), mean, std)
    torch.testing.assert_close(raw_out[:, :, :3], raw_in[:, :, :3], atol=1e-5, rtol=0)
    assert not torch.allclose(raw_out[:, :, 3:], raw_in[:, :, 3:], atol=1e-3)


def test_color_jitter_saturation_is_a_no_op_on_grey_images():
    x = torch.randn(6, 1, 5, 5)
    mean, std = RAW_STATS[1]
    saturation = ColorJitter(name="color_jitter", brightness=0, contrast=0, saturation=0.9)
    torch.testing.assert_close(augment_batch(x, [saturation], _gen(0), mean, std), x, atol=1e-5, rtol=0)


def test_color_jitter_needs_the_normalization_stats():
    with pytest.raises(ValueError, match="mean=data.mean, std=data.std"):
        augment_batch(torch.randn(2, 3, 4, 4), [ColorJitter(name="color_jitter")], _gen(0))
    with pytest.raises(ValueError, match="3 channels"):
        augment_batch(torch.randn(2, 3, 4, 4), [ColorJitter(name="color_jitter")], _gen(0), (0.5,), (0.2,))


def test_augmentations_chain_in_order():
    x = torch.randn(8, 3, 8, 8)
    mean, std = RAW_STATS[3]
    augs = [HFlip(name="hflip"), *NEW_AUGMENTATIONS, RandomCrop(name="random_crop", padding=2)]
    out = augment_batch(x, augs, _gen(5), mean, std)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(out, augment_batch(x, augs, _gen(5), mean, std))


# ----------------------------------------------------------------------------- uint8-resident images
def _float_path(raw_x, train_idx, val_idx, test_x):
    """What load_dataset did before images were held as uint8: the whole splits as float32 in [0, 1],
    normalized in place with the train part's statistics."""
    train, val, test = (raw_x[train_idx].to(torch.float32).div_(255.0), raw_x[val_idx].to(torch.float32).div_(255.0),
                        test_x.to(torch.float32).div_(255.0))
    std, mean = torch.std_mean(train, dim=(0, 2, 3), correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for x in (train, val, test):
        x.sub_(mean[:, None, None]).div_(std[:, None, None])
    return train, val, test


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_uint8_held_images_give_bit_identical_batches_to_the_float_path(tmp_path, dataset):
    from trainer.data import read_raw

    if dataset == "cifar10":
        write_cifar10(tmp_path, per_batch=40, num_test=8)
    else:
        write_mnist(tmp_path, num_train=200, num_test=8)
    spec = data_spec(name=dataset, path=str(tmp_path), val_fraction=0.2)
    data = load_dataset(spec, seed=3)
    raw = read_raw(spec, 3, downloader=None)
    train, val, test = _float_path(raw.train_x, data.train_indices, data.val_indices, raw.test_x)

    assert data.train_images.dtype == data.val_images.dtype == data.test_images.dtype == torch.uint8
    normalize = data.normalizer("cpu")
    for batch in epoch_batches(len(data.train_y), 16, epoch=1, seed=3):  # what the loop draws
        assert torch.equal(normalize(data.train_images[batch]), train[batch])
    assert torch.equal(normalize(data.val_images), val) and torch.equal(data.val_x, val)
    assert torch.equal(data.train_x, train) and torch.equal(data.test_x, test)
    # A quarter of the bytes: 1 per pixel instead of 4 (labels are the same int64 either way).
    labels = 8 * (len(data.train_y) + len(data.val_y))
    assert data.resident_bytes - labels == (train.nbytes + val.nbytes) // 4


def test_float_datasets_are_held_normalized_and_passed_through(digits):
    data, _, _ = digits
    assert data.train_images.dtype == torch.float32
    batch = data.train_images[:8]
    assert data.normalizer("cpu")(batch) is batch  # no per-batch work, no copy
    assert data.train_x is data.train_images
