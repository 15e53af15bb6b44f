"""What the benchmarks share: the machine they ran on, a measured matmul peak, the real training
loop run in-process, interleaved repeats, and one output format (a table for people, JSON for CI).

Every benchmark measures the things it compares side by side in one run, interleaved
(A B A B ...), and reports the best and the median of the repeats: on a shared machine the best
is the run least disturbed by other processes, the median says how noisy the run was.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

# Run as `python bench/<name>.py` from a fresh clone: the repository root holds service/ and trainer/.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from service.core.spec import SweepSpec  # noqa: E402

# The models the studies trained, as model specs (seed 000's CNN and MLP, seed 001's CIFAR10Net).
MODELS = {
    "seed-000 CNN": {"name": "cnn", "num_conv_layers": 2, "filters": 64, "num_fc_layers": 2, "hidden_size": 128},
    "cifar10net": {"name": "cifar10net"},
    "seed-000 MLP": {"name": "mlp", "hidden_sizes": [512, 256, 128]},
}


# ----------------------------------------------------------------------------- the machine
def machine() -> dict:
    """What the figures depend on: CPU model and cores, torch, threads, native bf16, GPU, load."""
    from trainer.loop import cpu_has_native_bf16

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # Other processes' load when the benchmark started: a busy machine means noisy figures.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def describe(info: dict) -> str:
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ", no GPU"
    return (
        f"{info['cpu']}, {info['cores']} cores, native bf16 {'yes' if info['cpu_native_bf16'] else 'no'}{gpu}; "
        f"torch {info['torch']}, {info['threads']} threads; load average {info['load_average_1min']:.2f} at start"
    )


def matmul_peak_gflops(dtype: torch.dtype, device: str = "cpu", size: int = 2048, seconds: float = 1.0) -> float:
    """The best GFLOP/s of a ``size``² matmul in ``dtype`` over about ``seconds`` of repeats:
    what this machine can do at best in that precision (the denominator of MFU)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):  # first calls pick kernels and fault in pages
        a @ b
    best, deadline = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == math.inf:
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def as_the_studies_wrote_it(model: torch.nn.Module) -> torch.nn.Module:
    """Undo our layer-order optimisation (ReLU after max-pooling, see
    trainer.models.pools_before_activation) so reference loops run the studies' own
    conv → ReLU → pool: the same numbers, the studies' speed."""
    from trainer.models import ConvBlock

    for module in model.modules():
        if isinstance(module, ConvBlock):
            module.pool_first = False
        if isinstance(module, torch.nn.Sequential):
            layers = list(module)
            for i in range(len(layers) - 1):
                if isinstance(layers[i], torch.nn.MaxPool2d) and type(layers[i + 1]) is torch.nn.ReLU:
                    module[i], module[i + 1] = layers[i + 1], layers[i]
    return model


# ----------------------------------------------------------------------------- the real loop
class InProcessSession:
    """What ``trainer.loop.fit`` needs from ``ray.tune``, without Ray: reports are kept in a list."""

    def __init__(self):
        import ray.train

        self.Checkpoint = ray.train.Checkpoint
        self.reports: list[dict] = []

    def get_checkpoint(self):
        return None

    def report(self, metrics: dict, checkpoint=None) -> None:
        self.reports.append(dict(metrics))


def fit_in_process(spec: SweepSpec) -> list[dict]:
    """Run the trainer's own loop on ``spec`` (concrete) in this process; its per-epoch reports."""
    from trainer.loop import fit

    session = InProcessSession()
    fit(spec, session)
    return session.reports


def bench_spec(model: dict, *, samples: int, epochs: int, amp: str, threads: int, batch_size: int = 64,
               augment: list | None = None, name: str = "bench") -> SweepSpec:
    """A concrete spec on synthetic CIFAR-shaped data (3×32×32, 10 classes): throughput does not
    depend on the pixels. ``samples`` training images (a 10% val split comes on top)."""
    return SweepSpec.model_validate({
        "name": name,
        "seed": 0,
        "data": {"name": "synthetic", "channels": 3, "image_size": 32, "num_classes": 10,
                 "num_samples": round(samples / 0.9), "val_fraction": 0.1, "augment": augment or []},
        "model": model,
        "train": {"epochs": epochs, "batch_size": batch_size, "optimizer": {"name": "adam", "lr": 1e-3}, "amp": amp},
        "resources": {"cpus_per_worker": threads},
        "checkpoint": {"every": epochs},
        "metrics": {"port": 0},
        "report": {"auto": False},  # what is timed is the sweep, not the report drawn after it
    })


# ----------------------------------------------------------------------------- repeats and output
def interleave(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call every run once per round, ``repeats`` rounds (A B A B ...): slow phases of a shared
    machine then hit every contender, not just one."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].append(run())
    return results


def separate_process() -> ProcessPoolExecutor:
    """A process of its own for one contender. Process-wide settings one loop makes must not
    speed up the other: the trainer keeps freed memory in the heap (trainer.loop's
    _reuse_freed_memory), which a reference loop run in the same process afterwards would enjoy
    too. ``.submit(fn, *args).result()``: one call at a time, so contenders never overlap."""
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


def summary(values: list[float], higher_is_better: bool = True) -> dict:
    """best and median of repeats (best: the least disturbed run), plus the raw values."""
    best = max(values) if higher_is_better else min(values)
    return {"best": best, "median": statistics.median(values), "values": list(values)}


def add_common_arguments(parser) -> None:
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs (CI), not speed")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")


def finish(results: dict, json_path: str | None) -> None:
    """Write the results as JSON when asked. Every benchmark's results carry 'machine'."""
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"results: {json_path}")
