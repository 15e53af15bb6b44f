"""sweepctl validate as a user sees it: a subprocess, its exit code and its output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    (existing / "summary.json").write_text("{}")
    result = sweepctl("run", "sweeps/quickstart.yaml", "--set", f"storage.uri={tmp_path / 'runs'}")
    assert result.returncode == 2
    assert "already exists" in result.stderr and "Traceback" not in result.stderr
    assert (existing / "summary.json").read_text() == "{}"
    assert [p.name for p in existing.iterdir()] == ["summary.json"]


def test_every_shipped_spec_validates():
    specs = sorted((REPO / "sweeps").glob("*.yaml"))
    assert specs, "sweeps/ has no specs"
    for path in specs:
        result = sweepctl("validate", str(path))
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        assert path.read_text().startswith("#"), f"{path.name} must open with a header comment"
