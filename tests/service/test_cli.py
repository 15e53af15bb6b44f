"""sweepctl validate as a user sees it: a subprocess, its exit code and its output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import BASE_SPEC, deep_update
from service.core.record import Objective, SweepStore, new_index

REPO = Path(__file__).resolve().parents[2]

THREE_MISTAKES = """\
name: three-mistakes
data: {name: digits}
model:
  name: cnn
  filtres: 64
  kernel_size: three
train:
  optimizer:
    lr: {loguniform: [1.0e-1, 1.0e-4]}
search: {algorithm: random, num_samples: 4}
"""


def sweepctl(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_validate_reports_every_mistake_with_path_and_line_and_no_traceback(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(THREE_MISTAKES)
    result = sweepctl("validate", str(spec))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    err = result.stderr
    assert "3 problems" in err
    assert "model.filtres (line 5): unknown key; did you mean 'filters'?" in err
    assert "model.kernel_size (line 6)" in err and "valid integer" in err
    assert "train.optimizer.lr.loguniform (line 9)" in err and "lo must be < hi" in err


def test_validate_good_spec_prints_trials_and_budget_without_importing_torch_or_ray():
    code = (
        "import sys; from service.cli import main; rc = main(['validate', 'sweeps/quickstart.yaml']);"
        "heavy = sorted(m for m in ('torch', 'ray', 'kubernetes') if m in sys.modules);"
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert "OK quickstart: 12 trials" in result.stdout
    assert "at most 96 epochs" in result.stdout


def test_validate_with_overrides_and_a_missing_file():
    result = sweepctl("validate", "sweeps/quickstart.yaml", "--set", "train.epochs=2", "--set", "search.num_samples=3")
    assert result.returncode == 0
    assert "36 trials" in result.stdout and "at most 72 epochs" in result.stdout
    missing = sweepctl("validate", "sweeps/nope.yaml")
    assert missing.returncode == 2 and "cannot read the spec file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_run_refuses_an_existing_sweep_and_changes_nothing(tmp_path):
    existing = tmp_path / "runs" / "quickstart"
    existing.mkdir(parents=True)
    index = new_index("quickstart", Objective(metric="val_acc", mode="max"), max_epochs=8, num_trials=12, attempt=1)
    (existing / "sweep.json").write_text(index.model_dump_json())
    result = sweepctl("run", "sweeps/quickstart.yaml", "--set", f"storage.uri={tmp_path / 'runs'}")
    assert result.returncode == 2
    assert "already exists" in result.stderr and "Traceback" not in result.stderr
    assert "sweepctl resume quickstart" in result.stderr and "--new" in result.stderr
    assert (existing / "sweep.json").read_text() == index.model_dump_json()
    assert [p.name for p in existing.iterdir()] == ["sweep.json"]


@pytest.mark.slow
def test_rerunning_a_finished_sweep_with_resume_reruns_nothing_and_new_starts_another(tmp_path):
    """What a retried RayJob does (`run --resume`) after its sweep had finished: no trial runs again."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(deep_update(BASE_SPEC, {"name": "tiny", "storage": {"uri": str(tmp_path / "runs")},
                                                            "train": {"epochs": 1}})))
    first = sweepctl("run", str(spec))
    assert first.returncode == 0, first.stdout + first.stderr
    store = SweepStore(str(tmp_path / "runs"), "tiny")
    before, before_trials = store.read_index(), store.read_trials()

    again = sweepctl("run", str(spec), "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    after = store.read_index()
    assert after.driver_attempt == 2 and after.status == "finished"
    assert after.trials == before.trials  # the same records: nothing trained again
    assert store.read_trials() == before_trials  # histories included

    other = sweepctl("run", str(spec), "--new")
    assert other.returncode == 0, other.stdout + other.stderr
    assert "running this one as tiny-2" in other.stdout
    assert SweepStore(str(tmp_path / "runs"), "tiny-2").read_index().trial_states == {"terminated": 1}


def test_every_shipped_spec_validates():
    specs = sorted((REPO / "sweeps").glob("*.yaml"))
    assert specs, "sweeps/ has no specs"
    for path in specs:
        result = sweepctl("validate", str(path))
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        assert path.read_text().startswith("#"), f"{path.name} must open with a header comment"


RUNS_AS_WRITTEN = """\
name: runs-as-written
seed: -1
data: {name: digits}
model:
  name: cnn
  filters: {grid: [8, 16, 32, 64, 128]}
train:
  amp: off
  optimizer: {lr: {grid: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]}}
search: {algorithm: grid, num_samples: 600}
scheduler:
  name: pbt
  mutations:
    model.num_conv_layers: {choice: [2, 3]}
    train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
checkpoint: {keep: null}
"""


def test_validate_refuses_what_would_fail_at_run_with_paths_and_lines(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(RUNS_AS_WRITTEN)
    result = sweepctl("validate", str(spec))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "seed (line 2): Input should be greater than or equal to 0, got -1" in result.stderr
    spec.write_text(RUNS_AS_WRITTEN.replace("seed: -1", "seed: 0"))
    result = sweepctl("validate", str(spec))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    err = result.stderr
    assert "scheduler.mutations.model.num_conv_layers (line 14): model.num_conv_layers changes the model's parameters" in err
    assert "scheduler.mutations.train.optimizer.lr (line 15): a grid at train.optimizer.lr (line 9)" in err
    spec.write_text(RUNS_AS_WRITTEN.replace("seed: -1", "seed: 0").replace("scheduler:\n  name: pbt", "scheduler:\n  name: fifo"))
    result = sweepctl("validate", str(spec))
    assert result.returncode == 2
    assert ("search.num_samples (line 10): model.filters 5 × train.optimizer.lr 4 × search.num_samples 600 "
            "= 12,000 trials > 10,000") in result.stderr
    result = sweepctl("validate", str(spec), "--max-trials", "12000")
    assert result.returncode == 0, result.stderr
    assert "OK runs-as-written: 12000 trials" in result.stdout


def test_amp_off_unquoted_as_documented_validates(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: amp-off\ndata: {name: digits}\nmodel: {name: mlp}\ntrain: {epochs: 1, amp: off}\n")
    result = sweepctl("validate", str(spec))
    assert result.returncode == 0, result.stderr
    result = sweepctl("validate", str(spec), "--set", "train.amp=on")
    assert result.returncode == 0, result.stderr
