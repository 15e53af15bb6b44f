"""Model FLOPs utilisation of the trainer: how much of this machine's measured peak it turns into
training, for the seed-000 CNN (and the other study models with --models).

    .venv/bin/python bench/mfu.py [--samples 1024] [--epochs 6] [--repeats 3] [--models ...]

MFU = (model FLOPs per training sample) × (samples/s) ÷ (peak FLOP/s of the precision trained in).
- FLOPs per sample: counted by torch.utils.flop_counter.FlopCounterMode over one training step
  (forward, loss, backward) at batch 64, divided by 64. The optimizer's update is not counted
  (the usual convention: model FLOPs only).
- samples/s: what ``trainer.loop.fit`` reports per epoch (training only), the best of all epochs
  but each run's first (on a shared machine: the least disturbed); "plain" is a tensor-resident
  eager loop without our changes (NCHW, torch.optim.Adam defaults, the studies' conv → ReLU →
  pool order, default allocator), for comparison. Each loop runs in a process of its own.
- peak: the best of a 2048² matmul in fp32 and in bf16, measured in the same run, interleaved
  with the training runs. fp32 training is judged against the fp32 peak, bf16 (autocast)
  training against the bf16 peak. On a GPU the same is printed against its measured peak
  and against the H100's dense bf16 datasheet peak (989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import time

from common import (MODELS, add_common_arguments, as_the_studies_wrote_it, bench_spec, describe, finish, fit_in_process,
                    machine, matmul_peak_gflops, separate_process)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from trainer.models import build_model  # noqa: E402

BATCH = 64
H100_BF16_DENSE_TFLOPS = 989.0
DTYPES = {"off": torch.float32, "bf16": torch.bfloat16}


def flops_per_sample(model_params: dict, device: str) -> float:
    """FLOPs of one training step (forward + backward) per sample, counted, not estimated."""
    spec = bench_spec(model_params, samples=BATCH, epochs=1, amp="off", threads=1)
    model = build_model(spec.model, (3, 32, 32), 10).to(device)
    x, y = torch.randn(BATCH, 3, 32, 32, device=device), torch.randint(0, 10, (BATCH,), device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / BATCH


def plain_loop(model_params: dict, samples: int, amp: str, threads: int, device: str, epochs: int) -> list[float]:
    """A tensor-resident eager loop as one would first write it: samples/s of each epoch but the first."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = bench_spec(model_params, samples=samples, epochs=epochs, amp=amp, threads=threads)
    model = as_the_studies_wrote_it(build_model(spec.model, (3, 32, 32), 10)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = torch.randn(samples, 3, 32, 32, device=device)
    y_all = torch.randint(0, 10, (samples,), device=device)
    dtype = DTYPES[amp]
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in torch.randperm(samples, device=device).split(BATCH):
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                loss = F.cross_entropy(model(x_all[batch]), y_all[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(samples / (time.perf_counter() - start))
    return rates[1:]


def ours(model_params: dict, samples: int, amp: str, threads: int, device: str, epochs: int) -> list[float]:
    spec = bench_spec(model_params, samples=samples, epochs=epochs, amp=amp, threads=threads)
    if device == "cuda":
        spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpus_per_worker": 1})})
    return [report["samples_per_second"] for report in fit_in_process(spec)[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024, help="training samples per epoch")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run; all but the first are timed")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best is reported")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["seed-000 CNN"])
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.epochs, args.repeats = 128, 2, 1
    torch.set_num_threads(args.threads)

    info = machine()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precisions = ["off", "bf16"] if info["cpu_native_bf16"] or device == "cuda" else ["off"]
    print(f"machine: {describe(info)}")
    print(f"device {device}, batch {BATCH}, {args.samples} samples per epoch, {args.epochs} epochs per run, "
          f"{args.threads} threads, {args.repeats} interleaved rounds (best epoch shown)")

    # bf16 only where it is native: emulated, a 2048² bf16 matmul takes about a minute.
    peaks: dict[str, list[float]] = {amp: [] for amp in precisions}
    rows = []
    # Each loop in a process of its own (see common.separate_process); the peak in this one.
    with separate_process() as plain_process, separate_process() as our_process:
        for name in args.models:
            flops = flops_per_sample(MODELS[name], device)
            for amp in precisions:
                rates: dict[str, list[float]] = {"plain": [], "ours": []}
                for _ in range(args.repeats):  # peak, plain, ours, peak, plain, ours, ...
                    for precision in precisions:
                        peaks[precision].append(
                            matmul_peak_gflops(DTYPES[precision], device, seconds=0.5 if args.smoke else 1.0))
                    job = (MODELS[name], args.samples, amp, args.threads, device, args.epochs)
                    rates["plain"] += plain_process.submit(plain_loop, *job).result()
                    rates["ours"] += our_process.submit(ours, *job).result()
                for loop, values in rates.items():
                    rows.append({"model": name, "amp": amp, "loop": loop, "flops_per_sample": flops,
                                 "samples_per_second": max(values), "samples_per_second_values": values})

    peak = {amp: max(values) for amp, values in peaks.items()}
    print("measured matmul peak (2048², best): " + ", ".join(
        f"{'bf16' if amp == 'bf16' else 'fp32'} {value:.0f} GFLOP/s" for amp, value in peak.items()))
    print(f"{'model':<14} {'amp':<5} {'loop':<6} {'MFLOP/sample':>12} {'samples/s':>10} {'GFLOP/s':>8}  MFU (vs peak of)")
    for row in rows:
        achieved = row["flops_per_sample"] * row["samples_per_second"] / 1e9
        row["achieved_gflops"] = achieved
        row["peak_precision"] = "bf16" if row["amp"] == "bf16" else "fp32"
        row["mfu"] = achieved / peak[row["amp"]]
        row["mfu_vs_fp32_peak"] = achieved / peak["off"]
        extra = ""
        if device == "cuda":
            row["mfu_vs_h100_bf16"] = achieved / (H100_BF16_DENSE_TFLOPS * 1e3)
            extra = f", {row['mfu_vs_h100_bf16']:.1%} of H100 dense bf16"
        print(f"{row['model']:<14} {row['amp']:<5} {row['loop']:<6} {row['flops_per_sample'] / 1e6:>12.1f} "
              f"{row['samples_per_second']:>10.0f} {achieved:>8.1f}  {row['mfu']:.1%} (vs {row['peak_precision']} peak){extra}")
    finish({"benchmark": "mfu", "machine": info, "device": device, "samples": args.samples,
            "peak_gflops": {("bf16" if amp == "bf16" else "fp32"): value for amp, value in peak.items()},
            "peak_gflops_values": {("bf16" if amp == "bf16" else "fp32"): v for amp, v in peaks.items()},
            "rows": rows}, args.json)


if __name__ == "__main__":
    main()
