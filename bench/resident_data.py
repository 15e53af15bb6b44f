"""What holding images as uint8 saves and costs: bytes a trial keeps on its device, and the
per-batch data path (index, normalize, augment) of a uint8-held split against the float32-held one
it replaced, side by side, on CIFAR-10's shape (50,000 × 3 × 32 × 32, written in the official format).

    .venv/bin/python bench/resident_data.py [--images 50000] [--repeats 5] [--augment] [--device cpu|cuda]

Both paths produce bit-identical batches (tests/trainer/test_data.py); the float path is the same
SplitData with its images normalized as float32 once, what load_dataset held before.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import tempfile
import time
from pathlib import Path

from common import add_common_arguments, describe, finish, interleave, machine, summary

import numpy as np  # noqa: E402
import torch  # noqa: E402

from service.core.spec import data_spec, RandomCrop, HFlip  # noqa: E402
from trainer.data import augment_batch, epoch_batches, load_dataset  # noqa: E402

BATCH = 64


def write_cifar10(folder: Path, images: int) -> None:
    """``images`` training images (5 batches) + 10,000 test images, random pixels, official pickles."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    per = images // 5
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(per, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per).tolist()
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    test = {b"data": rng.integers(0, 256, size=(min(10_000, per), 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, size=min(10_000, per)).tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    names = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(names, protocol=2))


def epoch_seconds(images, normalize, n: int, device, augment: list, mean, std) -> float:
    """One epoch of the loop's data path: draw the batches, index, normalize, augment."""
    generator = torch.Generator(device=device).manual_seed(0)
    start = time.perf_counter()
    for batch in epoch_batches(n, BATCH, epoch=1, seed=0):
        x = normalize(images[batch.to(device)])
        if augment:
            x = augment_batch(x, augment, generator, mean, std)
        x = x.contiguous(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000, help="official training images (CIFAR-10: 50,000)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved epochs per path")
    parser.add_argument("--augment", action="store_true", help="random crop + flip, as most studies train")
    parser.add_argument("--device", default="cpu")
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.images, args.repeats = 2_000, 2
    device = torch.device(args.device)
    info = machine()
    print(f"machine: {describe(info)}")
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar10(Path(tmp) / "cifar-10-batches-py", args.images)
        held = load_dataset(data_spec(name="cifar10", path=tmp, val_fraction=0.1), seed=0)
    as_float = dataclasses.replace(held, train_images=held.train_x, val_images=held.val_x, test_images=held.test_x)
    paths = {"float32-held": as_float, "uint8-held": held}
    on_device = {name: d.train_images.to(device) for name, d in paths.items()}
    normalizers = {name: d.normalizer(device) for name, d in paths.items()}
    augment = [RandomCrop(name="random_crop", padding=4), HFlip(name="hflip")] if args.augment else []
    n = len(held.train_y)
    times = interleave({name: (lambda name=name: epoch_seconds(on_device[name], normalizers[name], n, device,
                                                               augment, held.mean, held.std))
                        for name in paths}, args.repeats)
    rows = {}
    for name, data in paths.items():
        rows[name] = {"resident_bytes": data.resident_bytes, "epoch_seconds": summary(times[name], higher_is_better=False)}
    before, after = rows["float32-held"], rows["uint8-held"]
    ratio = after["epoch_seconds"]["best"] / before["epoch_seconds"]["best"]
    print(f"{args.images:,} CIFAR-10-shaped images ({n:,} train / {len(held.val_y):,} val), batch {BATCH}, "
          f"device {device}, augment {'crop+flip' if augment else 'none'}, {args.repeats} interleaved epochs")
    print(f"{'held as':<14} {'bytes per trial':>16} {'× 8 packed':>14} {'epoch s (best)':>15} {'median':>8}")
    for name, row in rows.items():
        s = row["epoch_seconds"]
        print(f"{name:<14} {row['resident_bytes']:>16,} {8 * row['resident_bytes']:>14,} {s['best']:>15.3f} {s['median']:>8.3f}")
    print(f"uint8 / float32: {after['resident_bytes'] / before['resident_bytes']:.3f}× the bytes, "
          f"{ratio:.2f}× the data path's time per epoch (best; median "
          f"{after['epoch_seconds']['median'] / before['epoch_seconds']['median']:.2f}×)")
    finish({"benchmark": "resident_data", "machine": info, "images": args.images, "device": str(device),
            "augment": bool(augment), "rows": rows, "time_ratio_best": ratio}, args.json)


if __name__ == "__main__":
    main()
