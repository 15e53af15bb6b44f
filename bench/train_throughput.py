"""Trainer throughput vs. the loop the studies wrote, side by side in one run.

    .venv/bin/python bench/train_throughput.py [--samples 4096] [--amp off|bf16]

Reference: a torchvision-style dataset of PIL images with per-sample ToTensor + Normalize (+ crop
and flip when --augment), a DataLoader at batch 64, the same model, same samples, same precision.
Ours: trainer.data's tensor-resident batches and batch augmentation, the same optimizer step as
trainer.loop. CIFAR-shaped random data (3×32×32 uint8): throughput does not depend on the pixels.
Prints samples/s for both and the ratio, per model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from service.spec import SweepSpec
from trainer.data import augment_batch, epoch_batches
from trainer.models import build_model

MODELS = {
    "seed-000 CNN": {"name": "cnn", "num_conv_layers": 2, "filters": 64, "num_fc_layers": 2, "hidden_size": 128},
    "cifar10net": {"name": "cifar10net"},
    "seed-000 MLP": {"name": "mlp", "hidden_sizes": [512, 256, 128]},
}
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


class PILDataset(Dataset):
    """How the studies fed data: one PIL image at a time through torchvision transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool):
        steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
        self.transform = transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def train_step(model, optimizer, x, y, amp_dtype):
    with torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def reference(model, images, labels, augment, amp_dtype) -> float:
    loader = DataLoader(PILDataset(images, labels, augment), batch_size=64, shuffle=True, num_workers=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for x, y in loader:
        train_step(model, optimizer, x, y, amp_dtype)
    return len(labels) / (time.perf_counter() - start)


def ours(model, images, labels, augment, amp_dtype) -> float:
    spec = SweepSpec.model_validate({
        "name": "bench", "data": {"name": "synthetic", "augment": [{"name": "random_crop"}, {"name": "hflip"}] if augment else []},
        "model": {"name": "mlp"},
    })
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()  # the conversion to a normalized tensor is part of our cost
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    x_all = (x_all - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    y_all = torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(0)
    for batch in epoch_batches(len(y_all), 64, epoch=1, seed=0):
        x = augment_batch(x_all[batch], spec.data.augment, generator, MEAN, STD)
        train_step(model, optimizer, x, y_all[batch], amp_dtype)
    return len(labels) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--amp", choices=["off", "bf16"], default="off")
    parser.add_argument("--augment", action="store_true", help="random crop + flip in both loops")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.samples, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.samples).astype(np.int64)

    print(f"{args.samples} CIFAR-shaped samples, batch 64, amp {args.amp}, augment {args.augment}, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"{'model':<14} {'reference/s':>12} {'ours/s':>10} {'ratio':>7}")
    for name, params in MODELS.items():
        results = {}
        for label, run in (("reference", reference), ("ours", ours), ("reference", reference), ("ours", ours)):
            torch.manual_seed(0)
            model = build_model(SweepSpec.model_validate({"name": "b", "data": {"name": "synthetic"}, "model": params}).model, (3, 32, 32), 10)
            results.setdefault(label, []).append(run(model, images, labels, args.augment, amp_dtype))
        ref, our = max(results["reference"]), max(results["ours"])  # best of two, interleaved
        print(f"{name:<14} {ref:>12.0f} {our:>10.0f} {our / ref:>6.2f}x")


if __name__ == "__main__":
    main()
