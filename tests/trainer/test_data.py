"""Behaviour of trainer.data: CIFAR readers, the seeded split, load_dataset, batches, augmentation."""

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from service.spec import DataSpec, HFlip, RandomCrop
from trainer.data import (
    augment_batch,
    epoch_batches,
    load_dataset,
    read_cifar,
    split_indices,
)


# ----------------------------------------------------------------------------- CIFAR fixtures
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
    data = load_dataset(DataSpec(name="cifar10", path=str(tmp_path), val_fraction=0.25), seed=0)
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
    spec = DataSpec(name="digits", val_fraction=0.1)
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
    spec = DataSpec(name="synthetic", num_samples=200, image_size=12, channels=2, num_classes=4)
    a, b = load_dataset(spec, seed=5), load_dataset(spec, seed=5)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, load_dataset(spec, seed=6).train_x)
    assert a.input_shape == (2, 12, 12) and a.num_classes == 4
    assert len(a.train_y) + len(a.val_y) == 200 and len(a.test_y) == 50
    assert set(a.train_y.tolist()) == set(range(4))


def test_synthetic_is_learnable():
    """A small MLP trained for 3 epochs reaches >90% val accuracy (the dataset's purpose)."""
    data = load_dataset(DataSpec(name="synthetic"), seed=0)
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
