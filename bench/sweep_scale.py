"""What the sweep driver's bookkeeping costs as the number of trials grows: `sweepctl run` vs. the
same trials under a plain Ray Tune script, side by side for N = 100, 400, 1600 trials.

    .venv/bin/python bench/sweep_scale.py [--ns 100,400,1600] [--repeats 1] [--workdir DIR]
    .venv/bin/python bench/sweep_scale.py --ns 100,10000     # optional: the 10,000-trial run (long)

Takes ~12-15 min on 2 cores with the driver of 5553cfb (ours at N=1600 alone ~9 min; plain
~1 min); `--smoke` (N = 8, 16) ~1.5-2 min, most of it four Ray start-ups and trial workers
importing torch.

The trials are tiny on purpose, so that what is left is the driver's work per trial: an MLP with
one hidden layer of 16 units on 256 synthetic 1×8×8 images (10 classes), 1 epoch, amp off, one
checkpoint each (``checkpoint: {every: 1, keep: 1}``), 0.5 CPU per trial and 4 trials at a time
(``resources.max_concurrent_trials``), FIFO, a grid over ``train.optimizer.lr`` with N distinct
values (so both sides run exactly the same N configs: the plain side takes Tune's param_space
and num_samples from ``trainer.driver.space``, as the driver does).

- ours: ``sweepctl run SPEC --metrics-port PORT`` (a free port: the Prometheus exporter is part of
  what we ship, so it stays on) in a fresh process, launch to exit: Python start-up, Ray, Tune,
  our sweep record (service/core/record.py) and driver.json writes, the exporter, Tune's shutdown.
- plain: a fresh process that runs the same trainable (``trainer.trainable.tune_trial``, same
  spec JSON) with ``tune.Tuner`` and nothing of ours around it: no callbacks, no summary, no
  exporter, no lock (the trainable itself captures each trial's output into
  <storage>/<name>/<trial_id>/logs/ on both sides: that is inside the trial, not the driver);
  ``reuse_actors=True``, ``max_concurrent_trials=4``, Tune's default trial
  directory names, ``CheckpointConfig(num_to_keep=None)``. For fairness it sets the same Ray/Tune
  environment variables our driver sets at import time (read from the ``os.environ.setdefault``
  calls in trainer/driver/*.py, printed in the header: RAY_AIR_NEW_OUTPUT=0, TUNE_GLOBAL_CHECKPOINT_S=2,
  TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1, ...), and starts Ray as the driver does
  (``include_dashboard=False, logging_level="WARNING", log_to_driver=False``; the driver also
  hands its workers the AWS_*/SWEEP_* environment, the plain side does not).
- Both run through this file as a small wrapper (``python bench/sweep_scale.py _ours|_plain ...``,
  nothing but the standard library imported before the side's own imports), which writes the
  driver process's own CPU seconds (``getrusage(RUSAGE_SELF)``, user + sys; Ray's raylet, GCS and
  trial workers are other processes and not counted) and, for ours, what our storage layer wrote
  in the driver (``service.core.storage.WRITES``: objects and bytes through write_bytes_atomic).
- After every run the trials are counted on disk, not from our record: trial directories of the
  experiment holding a ``checkpoint_*`` directory, on both sides; a side that did not run exactly
  N trials with one checkpoint each stops the benchmark (exit code 1, even when the side's own
  command exited 0; what was measured before is still written to ``--json``).
- Rounds are interleaved, and the side that goes first alternates from one N (and round) to the
  next. With ``--repeats`` > 1 the table shows the best (least disturbed) run of each side.

Checks printed at the end (the exit code is 0 either way: a benchmark reports): at the largest N
ours takes at most 1.25× the plain wall time; ours' driver CPU seconds per trial at the largest N
at most 1.5× those at the smallest N; ours' storage bytes per trial at the largest N at most 1.5×
those at the smallest N (flat: bookkeeping that rewrites a record of all trials grows with N).
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "plain")
# What trainer/driver/sweep.py sets at import time; used only if its source can no longer be read for them.
DRIVER_ENV_FALLBACK = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}
LIMITS = {"wall_ratio": 1.25, "cpu_growth": 1.5, "bytes_growth": 1.5}


# ----------------------------------------------------------------------------- the two drivers (child processes)
def driver_env() -> dict[str, str]:
    """The environment variables our driver sets for Ray/Tune when imported (its setdefault calls)."""
    found: dict[str, str] = {}
    pattern = re.compile(r'os\.environ\.setdefault\(\s*"(\w+)"\s*,\s*"([^"]*)"\s*\)')
    for path in sorted((ROOT / "trainer" / "driver").glob("*.py")):
        found.update(pattern.findall(path.read_text()))
    return found or dict(DRIVER_ENV_FALLBACK)


def _write_usage(out: str, rc: int, writes: int, written_bytes) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    Path(out).write_text(json.dumps({
        "rc": rc, "cpu_user_seconds": usage.ru_utime, "cpu_sys_seconds": usage.ru_stime,
        "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_kib": usage.ru_maxrss,
        "storage_writes": writes, "storage_bytes": written_bytes,
    }) + "\n")


def child_ours(spec_file: str, port: str, out: str) -> int:
    """`sweepctl run SPEC --metrics-port PORT` in this process; then this process's CPU and writes."""
    sys.path.insert(0, str(ROOT))
    from service import cli
    from service.core import storage

    rc = cli.main(["run", spec_file, "--metrics-port", port])
    counted = dict(getattr(storage, "WRITES", {}))
    _write_usage(out, rc, counted.get("writes", 0), counted.get("bytes", 0))
    return rc


def child_plain(spec_file: str, storage_path: str, out: str) -> int:
    """The same trials under plain Ray Tune: the same trainable, spec JSON, param space and samples."""
    for key, value in driver_env().items():  # before Ray is imported, as the driver does
        os.environ.setdefault(key, value)
    sys.path.insert(0, str(ROOT))
    import ray
    from ray import tune
    from ray.tune import CheckpointConfig

    from service.core.spec import SweepSpec
    from trainer.driver import space
    from trainer.trainable import tune_trial

    spec = SweepSpec.model_validate_json(Path(spec_file).read_text())
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(tune_trial, spec_json=spec.model_dump_json()),
                            {"cpu": spec.resources.cpus_per_worker}),
        param_space=space.param_space(spec),
        tune_config=tune.TuneConfig(num_samples=space.num_samples(spec),
                                    max_concurrent_trials=spec.resources.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=storage_path, name=spec.name, verbose=0,
                                  checkpoint_config=CheckpointConfig(num_to_keep=None)),
    )
    results = tuner.fit()
    errors = sum(1 for result in results if result.error)
    rc = 1 if errors else 0
    if errors:
        print(f"{errors} of {len(results)} trials failed; first: {next(r.error for r in results if r.error)}",
              file=sys.stderr)
    _write_usage(out, rc, 0, None)
    return rc


# ----------------------------------------------------------------------------- the benchmark
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def learning_rates(n: int) -> list[float]:
    """n distinct learning rates, log-spaced from 1e-4 to 1e-2 (6 significant digits: distinct to n = 10^5)."""
    if n == 1:
        return [1e-3]
    return [float(f"{1e-4 * 100 ** (i / (n - 1)):.6g}") for i in range(n)]


def scale_spec(n: int, *, name: str, storage: str, samples: int, port: int):
    from service.core.spec import SweepSpec

    return SweepSpec.model_validate({
        "name": name,
        "seed": 0,
        "data": {"name": "synthetic", "num_samples": samples, "image_size": 8, "channels": 1,
                 "num_classes": 10, "val_fraction": 0.25},
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "train": {"epochs": 1, "batch_size": 64, "amp": "off",
                  "optimizer": {"name": "adam", "lr": {"grid": learning_rates(n)}}},
        "search": {"algorithm": "grid"},
        "scheduler": {"name": "fifo"},
        "resources": {"cpus_per_worker": 0.5, "max_concurrent_trials": 4},
        "checkpoint": {"every": 1, "keep": 1},
        "storage": {"uri": storage},
        "metrics": {"port": port},
        "report": {"auto": False},  # what is timed is the sweep, not the report drawn after it (plain Tune has none)
    })


def on_disk(sweep_dir: Path) -> tuple[int, int]:
    """(trial directories holding a checkpoint_* directory, checkpoint_* directories) anywhere under
    ``sweep_dir`` (Tune's experiment: <storage>/<name>/<trial dir>/checkpoint_*), by files on disk."""
    per_trial: dict[Path, int] = {}
    for found in sweep_dir.rglob("checkpoint_*") if sweep_dir.is_dir() else ():
        if found.is_dir() and not any(p.name.startswith("checkpoint_") for p in found.relative_to(sweep_dir).parents
                                      if p.name):
            per_trial[found.parent] = per_trial.get(found.parent, 0) + 1
    return len(per_trial), sum(per_trial.values())


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def run_side(side: str, n: int, run_dir: Path, *, samples: int) -> dict:
    """One side for N trials in a fresh process, launch to exit; its driver figures and what is on disk."""
    import yaml

    run_dir.mkdir(parents=True)
    name = run_dir.name  # unique per N, round and side: scale-n<N>-r<round>-<side>
    storage = run_dir / "runs"
    spec = scale_spec(n, name=name, storage=str(storage), samples=samples, port=free_port())
    usage_file, log_file = run_dir / "driver-usage.json", run_dir / "driver.out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if side == "ours":
        spec_file = run_dir / f"{name}.yaml"
        spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        # The exporter's Prometheus scrape-target files: next to this run, not in the shared default.
        env["SWEEP_PROMETHEUS_TARGETS"] = str(run_dir / "targets")
        argv = ["_ours", str(spec_file), str(spec.metrics.port), str(usage_file)]
    else:
        spec_file = run_dir / f"{name}.json"
        spec_file.write_text(spec.model_dump_json())
        argv = ["_plain", str(spec_file), str(storage), str(usage_file)]
    with open(log_file, "w") as log:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
    if done.returncode != 0 or not usage_file.exists():
        raise SystemExit(f"{side} for N={n} failed (exit {done.returncode}); output ({log_file}):\n{_tail(log_file)}")
    usage = json.loads(usage_file.read_text())
    trials, checkpoints = on_disk(storage / name)
    if trials != n or checkpoints != n:
        raise SystemExit(f"{side} for N={n} (exit {done.returncode}) ran {trials} trials with {checkpoints} checkpoint directories on disk "
                         f"under {storage / name}, expected {n} and {n}; output ({log_file}):\n{_tail(log_file)}")
    row = {"side": side, "n": n, "name": name, "wall_seconds": wall, **usage,
           "trials_on_disk": trials, "checkpoints_on_disk": checkpoints}
    row["wall_seconds_per_trial"] = wall / n
    row["cpu_seconds_per_trial"] = usage["cpu_seconds"] / n
    if side == "ours":
        row["storage_bytes_per_trial"] = usage["storage_bytes"] / n
        row["storage_writes_per_trial"] = usage["storage_writes"] / n
    return row


def parse_ns(text: str) -> list[int]:
    ns = sorted({int(part) for part in text.split(",") if part.strip()})
    if not ns or ns[0] < 1:
        raise SystemExit("--ns: comma-separated positive trial counts, e.g. 100,400,1600")
    return ns


def main() -> None:
    import argparse
    import shutil
    import tempfile

    from common import add_common_arguments, describe, finish, machine, summary

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", default="100,400,1600", help="trial counts, comma-separated (default 100,400,1600)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds of every N and side (default 1)")
    parser.add_argument("--samples", type=int, default=256, help="synthetic images per trial, train + val (default 256)")
    parser.add_argument("--workdir", metavar="DIR",
                        help="keep every run's storage and output under DIR (default: a temporary directory, removed)")
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.ns, args.repeats, args.samples = "8,16", 1, 128
    ns = parse_ns(args.ns)

    info = machine()
    print(f"machine: {describe(info)}")
    print(f"trials: MLP [16] on {args.samples} synthetic 1x8x8 images, 1 epoch, 1 checkpoint each, "
          f"0.5 CPU, 4 at a time, FIFO grid over the lr; N = {', '.join(map(str, ns))}; {args.repeats} round(s)")
    env = driver_env()
    print("plain side's Ray/Tune environment (as our driver sets it): " + " ".join(f"{k}={v}" for k, v in env.items()))

    workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    try:
        step = 0
        for r in range(args.repeats):
            for n in ns:
                order = SIDES if step % 2 == 0 else SIDES[::-1]
                step += 1
                for side in order:
                    run_dir = workdir / f"scale-n{n}-r{r}-{side}"
                    try:
                        row = run_side(side, n, run_dir, samples=args.samples)
                    except SystemExit as failed:  # keep what was measured before the failure
                        finish({"benchmark": "sweep_scale", "machine": info, "ns": ns, "runs": runs,
                                "error": str(failed.code)}, args.json)
                        raise
                    row["round"] = r
                    runs.append(row)
                    extra = (f", {row['storage_writes']} writes, {row['storage_bytes'] / 1e6:.2f} MB"
                             if side == "ours" else "")
                    print(f"  N={n} {side}: {row['wall_seconds']:.1f} s, driver CPU {row['cpu_seconds']:.1f} s{extra}",
                          flush=True)
                    if not args.workdir:
                        shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for n in ns:
        row: dict = {"n": n}
        for side in SIDES:
            mine = [x for x in runs if x["n"] == n and x["side"] == side]
            figures = {
                "wall_seconds": summary([x["wall_seconds"] for x in mine], higher_is_better=False),
                "cpu_seconds": summary([x["cpu_seconds"] for x in mine], higher_is_better=False),
                "trials_on_disk": [x["trials_on_disk"] for x in mine],
            }
            figures["wall_seconds_per_trial"] = figures["wall_seconds"]["best"] / n
            figures["cpu_seconds_per_trial"] = figures["cpu_seconds"]["best"] / n
            if side == "ours":
                figures["storage_bytes"] = summary([x["storage_bytes"] for x in mine], higher_is_better=False)
                figures["storage_writes"] = summary([x["storage_writes"] for x in mine], higher_is_better=False)
                figures["storage_bytes_per_trial"] = figures["storage_bytes"]["best"] / n
                figures["storage_writes_per_trial"] = figures["storage_writes"]["best"] / n
            row[side] = figures
        row["wall_ratio"] = row["ours"]["wall_seconds"]["best"] / row["plain"]["wall_seconds"]["best"]
        rows.append(row)

    best = "best of each side's runs" if args.repeats > 1 else "one run each"
    print(f"\n({best}; driver CPU: the driver process's own user + sys seconds; storage: ours' writes through "
          "service.core.storage in the driver)")
    print(f"{'N':>6} {'ours s':>8} {'plain s':>8} {'ours/plain':>10} {'ours s/trial':>12} "
          f"{'CPU s/trial ours':>16} {'plain':>7} {'bytes/trial':>11} {'writes/trial':>12}")
    for row in rows:
        o, p = row["ours"], row["plain"]
        print(f"{row['n']:>6} {o['wall_seconds']['best']:>8.1f} {p['wall_seconds']['best']:>8.1f} "
              f"{row['wall_ratio']:>9.2f}x {o['wall_seconds_per_trial']:>12.3f} {o['cpu_seconds_per_trial']:>16.4f} "
              f"{p['cpu_seconds_per_trial']:>7.4f} {o['storage_bytes_per_trial']:>11.0f} {o['storage_writes_per_trial']:>12.2f}")

    small, large = rows[0], rows[-1]
    cpu_growth = large["ours"]["cpu_seconds_per_trial"] / small["ours"]["cpu_seconds_per_trial"]
    small_bytes = small["ours"]["storage_bytes_per_trial"]
    bytes_growth = large["ours"]["storage_bytes_per_trial"] / small_bytes if small_bytes else float("inf")
    checks = [
        {"check": f"at N={large['n']}, ours' wall time <= {LIMITS['wall_ratio']}x plain's",
         "value": large["wall_ratio"], "limit": LIMITS["wall_ratio"],
         "figures": f"{large['ours']['wall_seconds']['best']:.1f} s vs {large['plain']['wall_seconds']['best']:.1f} s "
                    f"= {large['wall_ratio']:.2f}x"},
        {"check": f"ours' driver CPU per trial at N={large['n']} <= {LIMITS['cpu_growth']}x that at N={small['n']}",
         "value": cpu_growth, "limit": LIMITS["cpu_growth"],
         "figures": f"{large['ours']['cpu_seconds_per_trial']:.4f} s vs {small['ours']['cpu_seconds_per_trial']:.4f} s "
                    f"= {cpu_growth:.2f}x"},
        {"check": f"ours' storage bytes per trial at N={large['n']} <= {LIMITS['bytes_growth']}x those at N={small['n']} (flat)",
         "value": bytes_growth, "limit": LIMITS["bytes_growth"],
         "figures": f"{large['ours']['storage_bytes_per_trial']:.0f} B vs {small_bytes:.0f} B = {bytes_growth:.2f}x "
                    f"({large['ours']['storage_writes_per_trial']:.2f} vs {small['ours']['storage_writes_per_trial']:.2f} writes per trial)"},
    ]
    print()
    for check in checks:
        check["pass"] = bool(check["value"] <= check["limit"])
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {check['check']}: {check['figures']}")
    if len(ns) == 1:
        print("(one N only: the growth checks compare it with itself)")

    finish({"benchmark": "sweep_scale", "machine": info, "ns": ns, "repeats": args.repeats, "samples": args.samples,
            "plain_driver_env": env, "limits": LIMITS, "rows": rows, "runs": runs, "checks": checks,
            "workdir": str(workdir) if args.workdir else None}, args.json)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_ours", "_plain"):
        child = child_ours if sys.argv[1] == "_ours" else child_plain
        sys.exit(child(*sys.argv[2:]))
    main()
