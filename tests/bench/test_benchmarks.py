"""Every benchmark in bench/ runs at tiny sizes (--smoke) and prints well-formed results.

Speed is not asserted (this machine is shared and noisy); what is asserted are the things that
hold on any machine: the output's structure, positive finite rates, ratios equal to the rates
they are made of, FLOP counts equal to the model's arithmetic, and facts of the sweeps (a FIFO
grid runs every epoch; early stopping can never beat the grid, since a trial it keeps scores
exactly what it scored in the grid).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_benchmark(name: str, tmp_path: Path, *args: str) -> tuple[dict, str]:
    """Run bench/<name>.py --smoke the way the README says; (its JSON results, its stdout)."""
    out = tmp_path / f"{name}.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--smoke", "--json", str(out), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"bench/{name}.py --smoke failed:\n{done.stdout}\n{done.stderr}"
    results = json.loads(out.read_text())
    assert results["benchmark"] == name
    assert results["machine"]["cores"] >= 1 and results["machine"]["torch"]
    assert done.stdout.startswith("machine: ")
    return results, done.stdout


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_train_throughput_prints_both_loops_and_their_ratio_per_model_and_precision(tmp_path):
    results, stdout = run_benchmark("train_throughput", tmp_path)
    precisions = ["off", "bf16"] if results["machine"]["cpu_native_bf16"] else ["off"]
    rows = {(r["model"], r["amp"]): r for r in results["rows"]}
    assert set(rows) == {(m, amp) for m in ("seed-000 CNN", "cifar10net", "seed-000 MLP") for amp in precisions}
    for (model, amp), row in rows.items():
        assert positive(row["reference"]["best"]) and positive(row["ours"]["best"])
        assert row["ratio_best"] == pytest.approx(row["ours"]["best"] / row["reference"]["best"])
        assert positive(row["ratio_median"])
        line = next(line for line in stdout.splitlines() if line.startswith(model) and f" {amp} " in line)
        assert f"{row['ratio_best']:.2f}x" in line
    assert positive(results["reference_data_only"]["best"])


def test_mfu_counts_the_cnn_flops_exactly_and_divides_by_the_measured_peak(tmp_path):
    results, stdout = run_benchmark("mfu", tmp_path)
    # Seed 000's CNN on 3x32x32: forward = conv1 2*3*9*64*32*32 + conv2 2*64*9*64*16*16 +
    # fc 2*4096*128 + 2*128*10; backward = twice that, less conv1's input gradient (the
    # images need none).
    forward = 2 * 3 * 9 * 64 * 32 * 32 + 2 * 64 * 9 * 64 * 16 * 16 + 2 * 4096 * 128 + 2 * 128 * 10
    expected = 3 * forward - 2 * 3 * 9 * 64 * 32 * 32
    peaks = results["peak_gflops"]
    assert positive(peaks["fp32"])
    assert {r["loop"] for r in results["rows"]} == {"plain", "ours"}
    for row in results["rows"]:
        assert row["model"] == "seed-000 CNN"
        assert row["flops_per_sample"] == expected
        assert positive(row["samples_per_second"])
        peak = peaks[row["peak_precision"]]
        assert row["mfu"] == pytest.approx(row["flops_per_sample"] * row["samples_per_second"] / 1e9 / peak)
        assert 0 < row["mfu"] < 1.5  # a peak measured in the same run: far above 1 would be a unit error
    assert "MFU" in stdout and "vs fp32 peak" in stdout


def test_sweep_overhead_times_sweepctl_run_against_the_plain_loop(tmp_path):
    results, stdout = run_benchmark("sweep_overhead", tmp_path)
    rows = results["rows"]
    assert [(r["workers"], r["trials"]) for r in rows] == [(1, 2), (1, 1)]
    for row in rows:
        assert positive(row["plain_seconds"]) and positive(row["sweep_seconds"])
        assert row["overhead_seconds"] == pytest.approx(row["sweep_seconds"] - row["plain_seconds"])
    # overhead(N) = start-up + N x per-trial, solved from the two sweeps
    assert results["startup_seconds"] + 2 * results["per_trial_seconds"] == pytest.approx(rows[0]["overhead_seconds"])
    assert "per 1-worker trial" in stdout


def test_scheduler_efficiency_compares_early_stopping_with_the_full_grid(tmp_path):
    results, stdout = run_benchmark("scheduler_efficiency", tmp_path)
    rows = {r["scheduler"]: r for r in results["rows"]}
    assert set(rows) == {"grid (fifo)", "asha", "asha, grid order", "hyperband", "hyperband, grid order"}
    grid = rows["grid (fifo)"]
    assert grid["epochs"] == grid["trials"] * results["epochs"]  # FIFO runs every trial to the end
    for row in rows.values():
        assert row["trials"] == grid["trials"]
        assert 0 < row["best_val_acc"] <= 1
        assert 0 < row["epochs"] <= grid["epochs"]
        assert row["epoch_share"] == pytest.approx(row["epochs"] / grid["epochs"])
        # Same spec + seed, same metrics: a scheduler only chooses which (trial, epoch) pairs of
        # the grid to run, so it can match the grid's best but never exceed it.
        assert row["best_val_acc"] <= grid["best_val_acc"]
        assert row["points_below_grid"] >= 0
    assert "target: within 0.5 pt" in stdout


def test_sweep_scale_runs_the_same_trials_as_plain_tune_at_every_n(tmp_path):
    workdir = tmp_path / "work"
    results, stdout = run_benchmark("sweep_scale", tmp_path, "--workdir", str(workdir))
    rows = {row["n"]: row for row in results["rows"]}
    assert sorted(rows) == [8, 16]
    for n, row in rows.items():
        for side in ("ours", "plain"):
            assert positive(row[side]["wall_seconds"]["best"]) and positive(row[side]["cpu_seconds"]["best"])
            assert row[side]["trials_on_disk"] == [n]
        assert row["ours"]["storage_bytes"]["best"] > 0 and row["ours"]["storage_writes"]["best"] > 0
        assert row["wall_ratio"] == pytest.approx(row["ours"]["wall_seconds"]["best"] / row["plain"]["wall_seconds"]["best"])
    # Counted again here, by files on disk (not our record): every trial directory of both
    # experiments holds exactly one checkpoint, and both sides ran N trials.
    for run in results["runs"]:
        experiment = workdir / run["name"] / "runs" / run["name"]
        trials = {c.parent for c in experiment.rglob("checkpoint_*") if c.is_dir()}
        assert len(trials) == run["n"], (run["side"], run["n"], len(trials))
        assert run["trials_on_disk"] == run["checkpoints_on_disk"] == run["n"]
    assert {(run["side"], run["n"]) for run in results["runs"]} == {(s, n) for s in ("ours", "plain") for n in (8, 16)}
    assert [c["pass"] for c in results["checks"]] == [c["value"] <= c["limit"] for c in results["checks"]]
    verdicts = [line for line in stdout.splitlines() if line.startswith(("PASS  ", "FAIL  "))]
    assert len(results["checks"]) == len(verdicts) == 3
