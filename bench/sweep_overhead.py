"""What running trials as a sweep costs: `sweepctl run` wall time vs. the same trials' training
run back to back in one plain process.

    .venv/bin/python bench/sweep_overhead.py [--trials 6] [--epochs 3] [--samples 16384] [--ddp-trials 2] [--breakdown]

The trials: seed 000's CNN on CIFAR-shaped synthetic data, a grid over the learning rate.
- plain: ``trainer.loop.fit`` on each trial's spec, one after another in this process (data
  loaded once, as one reused Tune actor does; checkpoints written to a temporary directory).
- sweep: ``sweepctl run`` in a fresh process, the whole command timed (Python and Ray start-up,
  Tune, our record writes and checkpoint copies, shutdown). Trials use every core
  (``cpus_per_worker`` = cores), so they run one at a time, like the plain loop.
- The same sweep with 1 trial splits the overhead: overhead(N) = start-up + N × per-trial, so
  per-trial = (overhead(N) - overhead(1)) / (N - 1).
- N-worker trials (``--ddp-trials``, 2 workers × 1 CPU each, Ray Train's TorchTrainer) are timed
  the same way against the same plain baseline (one process using both cores), separately.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import MODELS, ROOT, add_common_arguments, bench_spec, describe, finish, fit_in_process, machine

from service.core.spec import SweepSpec, concrete, search_space  # noqa: E402

LEARNING_RATES = [3.0e-4, 1.0e-3, 2.0e-3, 3.0e-3, 5.0e-4, 7.0e-4, 1.5e-3, 2.5e-3]


def sweep_spec(trials: int, *, epochs: int, samples: int, cores: int, storage: str, name: str,
               workers: int = 1) -> SweepSpec:
    if trials > len(LEARNING_RATES):
        raise SystemExit(f"--trials: at most {len(LEARNING_RATES)}")
    base = bench_spec(MODELS["seed-000 CNN"], samples=samples, epochs=epochs, amp="auto", threads=cores, name=name)
    spec = base.model_dump(mode="json")
    spec["train"]["optimizer"]["lr"] = {"grid": LEARNING_RATES[:trials]}
    spec["search"] = {"algorithm": "grid"}
    spec["checkpoint"] = {"every": 1, "keep": 2}  # the defaults a study runs with
    spec["storage"] = {"uri": storage}
    spec["resources"] = {"workers_per_trial": workers, "cpus_per_worker": cores // workers}
    return SweepSpec.model_validate(spec)


def plain(spec: SweepSpec) -> float:
    """Seconds to train every trial of ``spec`` back to back in this process (data loaded once)."""
    from trainer import loop

    loop._dataset.cache_clear()  # loading the data is part of the work, once, as in a Tune actor
    cores = spec.resources.cpus_per_worker * spec.resources.workers_per_trial
    single = spec.model_copy(update={"resources": spec.resources.model_copy(
        update={"workers_per_trial": 1, "cpus_per_worker": cores})})
    (path, primitive), = search_space(single).items()
    start = time.perf_counter()
    for value in primitive.grid:
        fit_in_process(concrete(single, {path: value}))
    return time.perf_counter() - start


def sweep(spec: SweepSpec, workdir: Path) -> float:
    """Seconds for `sweepctl run` on ``spec`` in a fresh process, from launch to exit."""
    spec_file = workdir / f"{spec.name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "service.cli", "run", str(spec_file)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"sweepctl run {spec_file} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds


def breakdown(spec: SweepSpec) -> dict:
    """Where a sweep's overhead goes: ``run_sweep`` in this process with a Tune callback timing
    every trial start, report and end on the driver's clock (Ray started first, timed apart)."""
    import ray
    from ray.tune import Callback

    from trainer.driver.sweep import run_sweep

    class Clock(Callback):
        def __init__(self):
            self.starts, self.ends, self.compute = {}, {}, {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.starts[trial.trial_id] = time.perf_counter()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            # the loop's own timing of its work: train + validate, and the checkpoint write
            seconds = result.get("epoch_seconds", 0.0) + result.get("checkpoint_seconds", 0.0)
            self.compute[trial.trial_id] = self.compute.get(trial.trial_id, 0.0) + seconds

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.ends[trial.trial_id] = time.perf_counter()

    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_init = time.perf_counter() - start
    clock = Clock()
    start = time.perf_counter()
    run_sweep(spec, echo=lambda line: None, callbacks=[clock])
    end = time.perf_counter()
    ray.shutdown()
    order = sorted(clock.starts, key=clock.starts.get)
    in_trial = [clock.ends[t] - clock.starts[t] - clock.compute[t] for t in order]
    gaps = [clock.starts[b] - clock.ends[a] for a, b in zip(order, order[1:])]
    return {
        "ray_init_seconds": ray_init,
        "until_first_trial_seconds": clock.starts[order[0]] - start,  # Tuner set-up, worker start
        "in_trial_overhead_seconds": in_trial,  # per trial: its time in Tune minus the loop's work
        "between_trials_seconds": gaps,  # previous trial's end to the next one's start
        "after_last_trial_seconds": end - clock.ends[order[-1]],
        "loop_work_seconds": [clock.compute[t] for t in order],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="1-worker trials in the sweep")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=16384, help="training samples per epoch")
    parser.add_argument("--ddp-trials", type=int, default=2, help="2-worker trials (0: skip the N-worker part)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also run the 1-worker sweep in-process and time where its overhead goes")
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.epochs, args.samples, args.ddp_trials = 2, 1, 256, 0

    info = machine()
    cores = info["cores"]
    print(f"machine: {describe(info)}")
    print(f"trials: seed-000 CNN, {args.samples} CIFAR-shaped samples × {args.epochs} epochs, amp auto, "
          f"checkpoint every epoch; 1-worker trials use {cores} CPUs (one at a time)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        workdir = Path(tmp)
        storage = str(workdir / "runs")
        # Imports and first-call kernel set-up are start-up costs of the sweep's workers too, but
        # not training compute: pay them here before the plain loop is timed.
        fit_in_process(bench_spec(MODELS["seed-000 CNN"], samples=64, epochs=1, amp="auto", threads=cores))
        parts = [("1-worker", 1, args.trials), ("1-worker", 1, 1)]
        if args.ddp_trials:
            parts.append((f"{cores}-worker", cores, args.ddp_trials))
        for label, workers, trials in parts:
            spec = sweep_spec(trials, epochs=args.epochs, samples=args.samples, cores=cores,
                              storage=storage, name=f"overhead-{workers}w-{trials}t", workers=workers)
            compute = plain(spec)
            wall = sweep(spec, workdir)
            rows.append({"trials_kind": label, "workers": workers, "trials": trials,
                         "plain_seconds": compute, "sweep_seconds": wall, "overhead_seconds": wall - compute})
            print(f"  {label} × {trials}: plain {compute:.1f} s, sweepctl run {wall:.1f} s", flush=True)

    many, one = rows[0], rows[1]
    per_trial = (many["overhead_seconds"] - one["overhead_seconds"]) / max(1, many["trials"] - 1)
    startup = one["overhead_seconds"] - per_trial
    print(f"\n{'trials':<16} {'plain s':>8} {'sweep s':>8} {'overhead s':>10} {'overhead':>9} {'per trial s':>11}")
    for row in rows:
        row["overhead_fraction"] = row["overhead_seconds"] / row["plain_seconds"]
        row["per_trial_seconds"] = per_trial if row["workers"] == 1 else (row["overhead_seconds"] - startup) / row["trials"]
        print(f"{row['trials']} × {row['trials_kind']:<10} {row['plain_seconds']:>8.1f} {row['sweep_seconds']:>8.1f} "
              f"{row['overhead_seconds']:>10.1f} {row['overhead_fraction']:>9.1%} {row['per_trial_seconds']:>11.1f}")
    print(f"start-up + shutdown (fixed, per sweep): {startup:.1f} s; per 1-worker trial: {per_trial:.1f} s "
          f"(overhead without the fixed part: {per_trial * many['trials'] / many['plain_seconds']:.1%} of {many['trials']} trials' compute)")
    results = {"benchmark": "sweep_overhead", "machine": info, "epochs": args.epochs, "samples": args.samples,
               "startup_seconds": startup, "per_trial_seconds": per_trial, "rows": rows}
    if args.breakdown:
        with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
            spec = sweep_spec(args.trials, epochs=args.epochs, samples=args.samples, cores=cores,
                              storage=tmp, name="overhead-breakdown")
            parts = results["breakdown"] = breakdown(spec)
        mean = lambda values: sum(values) / len(values) if values else 0.0  # noqa: E731
        print(f"where it goes (in-process run_sweep, driver clock): ray.init {parts['ray_init_seconds']:.1f} s, "
              f"until the first trial starts {parts['until_first_trial_seconds']:.1f} s, per trial "
              f"{mean(parts['in_trial_overhead_seconds']):.2f} s inside it (besides the loop's own "
              f"{mean(parts['loop_work_seconds']):.1f} s) + {mean(parts['between_trials_seconds']):.2f} s between "
              f"trials, after the last one {parts['after_last_trial_seconds']:.1f} s")
    finish(results, args.json)


if __name__ == "__main__":
    main()
