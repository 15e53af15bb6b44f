"""Trainer throughput vs. the loop the studies wrote, side by side in one run.

    .venv/bin/python bench/train_throughput.py [--samples 1024] [--epochs 6] [--repeats 3] [--augment]

Reference: the studies' loop. A torchvision-style dataset of PIL images with per-sample ToTensor +
Normalize (+ RandomCrop and RandomHorizontalFlip with --augment), a DataLoader at batch 64,
``torch.optim.Adam`` with its defaults, the same model (its layers in the studies' order) and
samples, the same autocast setting.
Ours: ``trainer.loop.fit`` itself, run in-process on the same number of CIFAR-shaped synthetic
samples (its tensor-resident batches, batch augmentation, optimizer and memory layout); its
samples/s is the figure the trainer reports to Tune (training only, validation excluded).
Both run several short epochs; every epoch but the first (kernel selection, warm-up) is timed.
On a shared machine the best epoch is the least disturbed one: "best" compares best epochs,
"median" the medians of all timed epochs. Each loop runs in a process of its own (the trainer
tunes the process's allocator; the reference must not profit from that), the two alternate
(ref, ours, ref, ours, ...). Prints samples/s for both and the ratio per model and precision.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import (MODELS, add_common_arguments, as_the_studies_wrote_it, bench_spec, describe, finish, fit_in_process,
                    machine, separate_process, summary)

import torch  # noqa: E402  (after common: it puts the repository on sys.path)
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

from trainer.models import build_model  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
AUGMENT = [{"name": "random_crop", "padding": 4}, {"name": "hflip"}]


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


def random_images(samples: int):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (samples, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 10, samples).astype(np.int64)


def reference_data_only(samples: int, augment: bool, threads: int, epochs: int) -> list[float]:
    """The reference's data pipeline alone (no model): samples/s of each pass but the first.
    What a loop with the reference's own compute would gain from free data is bounded by this."""
    torch.set_num_threads(threads)
    loader = DataLoader(PILDataset(*random_images(samples), augment), batch_size=64, shuffle=True, num_workers=0)
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        for _batch in loader:
            pass
        rates.append(samples / (time.perf_counter() - start))
    return rates[1:]


def reference(model_params: dict, samples: int, amp: str, augment: bool, threads: int, epochs: int) -> list[float]:
    """The studies' loop: samples/s of each epoch but the first."""
    torch.set_num_threads(threads)
    images, labels = random_images(samples)
    torch.manual_seed(0)
    spec = bench_spec(model_params, samples=samples, epochs=epochs, amp=amp, threads=threads)
    model = as_the_studies_wrote_it(build_model(spec.model, (3, 32, 32), 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(PILDataset(images, labels, augment), batch_size=64, shuffle=True, num_workers=0)
    amp_dtype = torch.bfloat16 if amp == "bf16" else None
    model.train()
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        running_loss, correct = 0.0, 0  # the studies printed train loss and accuracy per epoch
        for x, y in loader:
            with torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = model(x)
                loss = F.cross_entropy(outputs, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * len(y)
            correct += (outputs.argmax(1) == y).sum().item()
        rates.append(samples / (time.perf_counter() - start))
    return rates[1:]


def ours(model_params: dict, samples: int, amp: str, augment: bool, threads: int, epochs: int) -> list[float]:
    """trainer.loop.fit: the samples/s it reports for each epoch but the first."""
    spec = bench_spec(model_params, samples=samples, epochs=epochs, amp=amp, threads=threads,
                      augment=AUGMENT if augment else [])
    return [report["samples_per_second"] for report in fit_in_process(spec)[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024, help="training samples per epoch")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run; all but the first are timed")
    parser.add_argument("--amp", nargs="+", choices=["off", "bf16"], default=None,
                        help="precisions to compare (default: off, and bf16 where the hardware has it)")
    parser.add_argument("--augment", action="store_true", help="random crop + flip in both loops")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; best and median are reported")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.epochs, args.repeats = 128, 2, 1

    info = machine()
    native_bf16 = info["cpu_native_bf16"]
    precisions = args.amp or (["off", "bf16"] if native_bf16 else ["off"])
    print(f"machine: {describe(info)}")
    print(f"{args.samples} CIFAR-shaped training samples per epoch, batch 64, {args.epochs} epochs per run (all but "
          f"the first timed), augment {'crop+flip' if args.augment else 'none'}, {args.threads} threads, "
          f"{args.repeats} interleaved rounds")
    print(f"{'':<20} {'best epoch':^28}  {'median epoch':^28}")
    print(f"{'model':<14} {'amp':<5} {'reference/s':>11} {'ours/s':>9} {'ratio':>6}  {'reference/s':>11} {'ours/s':>9} {'ratio':>6}")

    rows = []
    with separate_process() as reference_process, separate_process() as our_process:
        for name in args.models:
            for amp in precisions:
                refs, ourss = [], []
                for _ in range(args.repeats):  # interleaved: ref, ours, ref, ours, ...
                    job = (MODELS[name], args.samples, amp, args.augment, args.threads, args.epochs)
                    refs += reference_process.submit(reference, *job).result()
                    ourss += our_process.submit(ours, *job).result()
                ref, our = summary(refs), summary(ourss)
                ratio_best = our["best"] / ref["best"]
                ratio_median = our["median"] / ref["median"]
                rows.append({"model": name, "amp": amp, "reference": ref, "ours": our,
                             "ratio_best": ratio_best, "ratio_median": ratio_median})
                print(f"{name:<14} {amp:<5} {ref['best']:>11.0f} {our['best']:>9.0f} {ratio_best:>5.2f}x  "
                      f"{ref['median']:>13.0f} {our['median']:>9.0f} {ratio_median:>5.2f}x", flush=True)
        data_only = summary(reference_process.submit(
            reference_data_only, args.samples, args.augment, args.threads, args.epochs).result())
    print("ratio = ours / reference samples/s")
    print(f"the reference's data pipeline alone (PIL transforms + DataLoader, no model): {data_only['best']:.0f} samples/s "
          f"= {1e6 / data_only['best']:.0f} µs per sample")
    finish({"benchmark": "train_throughput", "machine": info, "samples": args.samples, "epochs": args.epochs,
            "augment": args.augment,
            "threads": args.threads, "repeats": args.repeats, "rows": rows, "reference_data_only": data_only}, args.json)


if __name__ == "__main__":
    main()
