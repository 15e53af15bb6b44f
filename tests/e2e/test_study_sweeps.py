"""Every study in sweeps/ runs end to end at smoke scale through `sweepctl run`, using the smoke
overrides its own header documents (synthetic data or real digits that need no download, 1-2
epochs, at most 4 trials)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from service.cli import main
from service.core.loading import load_spec
from service.core.record import SweepStore
from service.core.spec import max_epochs, num_trials

pytestmark = pytest.mark.slow
SWEEPS = sorted((Path(__file__).resolve().parents[2] / "sweeps").glob("*.yaml"))

# What each study asks for at full scale (the seed studies' own numbers).
FULL_SCALE_TRIALS = {
    "quickstart": 12,
    "model_type": 3,
    "cnn_structure": 36,
    "cnn_hyperband": 20,
    "cnn_regularization": 16,
    "resnet_transfer": 4,
    "cifar10net_optuna": 30,
    "cifar100_small_resnet_asha": 24,
    "activation_optimizer": 30,
    "resnet50_hyperopt": 10,
    "mnist_cnn_ladder": 9,
    "cifar10_augmentation": 3,
    "cnn_pbt": 8,
}


# The real MNIST subset a smoke line's `make mnist5k` writes (service/core/mnist5k.py): 4,000 train
# images. The studies whose smoke run trains on it:
MNIST5K_DIR = "data/mnist5k"
MNIST5K_TRAIN = 4000
ON_REAL_DIGITS = {"mnist_cnn_ladder"}
# The study whose smoke run also gets the report its driver writes at the end (report.auto, the
# default); the others turn it off (2-5 s each).
REPORTED = "mnist_cnn_ladder"


def smoke_overrides(path: Path) -> list[str]:
    """The --set values of the '# Smoke:' line in the spec's header."""
    line = next((l for l in path.read_text().splitlines() if l.startswith("# Smoke:")), None)
    assert line, f"{path.name}: the header has no '# Smoke:' line"
    words = shlex.split(line.removeprefix("# Smoke:"))
    return [words[i + 1] for i, word in enumerate(words) if word == "--set"]


def test_every_study_is_listed_with_its_full_scale_trial_count():
    assert {p.stem for p in SWEEPS} == set(FULL_SCALE_TRIALS)
    for path in SWEEPS:
        assert num_trials(load_spec(path)) == FULL_SCALE_TRIALS[path.stem], path.name


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_study_runs_at_smoke_scale(ray_local, tmp_path, path, capsys):
    overrides = smoke_overrides(path) + [f"storage.uri={tmp_path}", "metrics.port=0"]
    real_digits = f"data.path={MNIST5K_DIR}" in overrides
    assert real_digits == (path.stem in ON_REAL_DIGITS), path.name
    if real_digits:  # what the smoke line's `make mnist5k` runs, into this test's directory
        assert main(["data", "mnist5k", str(tmp_path / "mnist5k")]) == 0
        overrides = [f"data.path={tmp_path / 'mnist5k'}" if o == f"data.path={MNIST5K_DIR}" else o for o in overrides]
    if path.stem != REPORTED:
        overrides.append("report.auto=false")
    spec = load_spec(path, overrides)
    assert num_trials(spec) <= 4 and max_epochs(spec) <= 2
    assert spec.data.name in ("synthetic", "digits") or (real_digits and not spec.data.download), \
        "smoke runs must not need a dataset download"

    args = ["run", str(path)] + [arg for o in overrides for arg in ("--set", o)]
    assert main(args) == 0, capsys.readouterr().err

    store = SweepStore(str(tmp_path), spec.name)
    index = store.read_index()
    assert len(index.trials) == num_trials(spec)
    assert index.status == "finished"
    assert all(t.status in ("terminated", "stopped_early") for t in index.trials), index.trial_states
    out = capsys.readouterr().out
    assert "Top " in out  # the leaderboard was printed
    if real_digits:  # it trained on the real subset's 4,000 training digits, val_fraction of them held out
        held_out = round(MNIST5K_TRAIN * spec.data.val_fraction)
        for trial in store.read_trials(index):
            first = trial.history[0]
            assert (first.train_samples, first.val_samples) == (MNIST5K_TRAIN - held_out, held_out), trial.trial_id
        assert index.best.best.val_acc > 0.5  # real digits: one epoch takes a CNN far above chance (0.1)
    report = tmp_path / spec.name / "report" / "report.html"
    assert report.is_file() == (path.stem == REPORTED)  # written by the driver, without a separate command
    if report.is_file():
        assert f"report: {report}" in out and index.best_trial in report.read_text()
