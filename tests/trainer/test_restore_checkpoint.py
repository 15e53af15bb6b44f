"""A corrupt checkpoint is not fatal (trainer/loop.py ``restore_checkpoint``), without Ray: local
checkpoint directories laid out as Tune lays them out (<sweep>/<trial>/checkpoint_NNNNNN), written
by the trainer's own ``fit``/``save_checkpoint``, then damaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import ray.train

from conftest import BASE_SPEC, deep_update
from service.core import checkpoint as checkpoint_format
from service.core.spec import SweepSpec
from trainer.loop import fit, restore_checkpoint
from tune_session import Session


def _spec(tmp_path: Path, epochs: int, **model) -> SweepSpec:
    return SweepSpec.model_validate(deep_update(BASE_SPEC, {
        "name": "rs", "storage": {"uri": str(tmp_path)}, "train": {"epochs": epochs}, "model": model}))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A trial that checkpointed after each of its 4 epochs: <sweep>/t_own/checkpoint_00000{0..3}."""
    root = tmp_path_factory.mktemp("runs")
    trial_dir = root / "rs" / "t_own"
    trial_dir.mkdir(parents=True)
    fit(_spec(root, epochs=4), Session(trial_dir))
    return trial_dir


@pytest.fixture
def trial_dir(trained, tmp_path) -> Path:
    """A fresh copy of ``trained`` to damage."""
    copy = tmp_path / "rs" / "t_own"
    shutil.copytree(trained, copy)
    return copy


def _restore(checkpoint_dir: Path, trial_dir: Path):
    said: list[str] = []
    found = restore_checkpoint(ray.train.Checkpoint(str(checkpoint_dir)), trial_dir.name,
                               trial_dir=str(trial_dir), say=said.append)
    return found, said


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_an_intact_checkpoint_restores_as_it_is_and_says_nothing(trial_dir):
    found, said = _restore(trial_dir / "checkpoint_000003", trial_dir)
    assert found.state["epoch"] == 4 and found.checkpoint.path == str(trial_dir / "checkpoint_000003")
    assert found.skipped == [] and said == []


def test_a_truncated_checkpoint_falls_back_to_the_previous_intact_one_never_a_newer_one(trial_dir):
    _truncate(trial_dir / "checkpoint_000002" / "state.pt")  # epoch 3: the one Tune restores
    # checkpoint_000003 (epoch 4) is intact but newer than what Tune recorded: not a candidate.
    found, said = _restore(trial_dir / "checkpoint_000002", trial_dir)
    assert found.state["epoch"] == 2 and found.checkpoint.path.endswith("t_own/checkpoint_000001")
    assert found.skipped == [{"uri": str(trial_dir / "checkpoint_000002"), "reason": found.skipped[0]["reason"]}]
    assert found.skipped[0]["reason"].startswith("checksum mismatch for state.pt in checkpoint_000002")
    assert said == [
        f"skipping checkpoint {trial_dir / 'checkpoint_000002'}: {found.skipped[0]['reason']}; "
        f"trying the previous one, {trial_dir / 'checkpoint_000001'}",
        f"restored from {trial_dir / 'checkpoint_000001'} (epoch 2)",
    ]


def test_every_checkpoint_corrupt_means_a_fresh_start_and_says_so(trial_dir):
    for k in range(3):
        _truncate(trial_dir / f"checkpoint_{k:06d}" / ("spec.json" if k == 0 else "state.pt"))
    found, said = _restore(trial_dir / "checkpoint_000002", trial_dir)
    assert found.state is None and found.checkpoint is None
    assert [s["uri"].rsplit("/", 1)[1] for s in found.skipped] == ["checkpoint_000002", "checkpoint_000001",
                                                                   "checkpoint_000000"]  # newest epoch first
    assert "checksum mismatch for spec.json" in found.skipped[-1]["reason"]
    assert said[-1].endswith("no earlier intact checkpoint of this trial: starting fresh (epoch 1)")
    assert len(said) == 3


def test_missing_files_and_a_state_that_does_not_load_are_corrupt_too(trial_dir):
    shutil.rmtree(trial_dir / "checkpoint_000003")  # Tune's checkpoint is gone from storage
    # checkpoint_000002: bytes that match the manifest (rewritten for them) but are no torch state
    broken = trial_dir / "checkpoint_000002"
    (broken / "state.pt").write_bytes(b"not a zip archive")
    manifest = json.loads((broken / "checkpoint.json").read_text())
    checkpoint_format.write_manifest(broken, manifest["epoch"], manifest["metrics"])
    (trial_dir / "checkpoint_000001" / "checkpoint.json").unlink()  # no manifest: never a candidate
    found, said = _restore(trial_dir / "checkpoint_000003", trial_dir)
    reasons = [s["reason"] for s in found.skipped]
    # The missing one's epoch is unknown: older means an earlier checkpoint number.
    assert reasons[0] == "checkpoint_000003 is not in storage (deleted, or never completely written)"
    assert reasons[1].startswith("state.pt of checkpoint_000002 does not load (")
    assert len(reasons) == 2 and found.state["epoch"] == 1 and found.checkpoint.path.endswith("checkpoint_000000")


def test_a_corrupt_donor_checkpoint_falls_back_to_the_trials_own_latest(trial_dir):
    donor = trial_dir.parent / "t_donor"
    shutil.copytree(trial_dir / "checkpoint_000001", donor / "checkpoint_000001")
    _truncate(donor / "checkpoint_000001" / "state.pt")
    found, said = _restore(donor / "checkpoint_000001", trial_dir)
    # its own latest (epoch 4), whatever the donor's epoch (2): it goes on from where it was
    assert found.state["epoch"] == 4 and found.checkpoint.path.endswith("t_own/checkpoint_000003")
    assert [s["uri"] for s in found.skipped] == [str(donor / "checkpoint_000001")]
    assert said[0].endswith(f"trying this trial's own latest, {trial_dir / 'checkpoint_000003'}")


def test_fit_resumes_from_the_previous_checkpoint_and_reports_what_it_skipped(trial_dir, capsys):
    _truncate(trial_dir / "checkpoint_000001" / "state.pt")  # epoch 2
    for later in ("checkpoint_000002", "checkpoint_000003"):  # as if the crash came after epoch 2
        shutil.rmtree(trial_dir / later)
    session = Session(trial_dir, start_from=trial_dir / "checkpoint_000001", first_index=2)
    fit(_spec(trial_dir.parents[1], epochs=4), session)
    assert [r["epoch"] for r in session.reports] == [2, 3, 4]
    first = session.reports[0]
    assert first["resumed_from_epoch"] == 1 and first["restored_from"] == str(trial_dir / "checkpoint_000000")
    assert [s["uri"] for s in first["restore_skipped"]] == [str(trial_dir / "checkpoint_000001")]
    assert "restore_skipped" not in session.reports[1]
    out = capsys.readouterr().out
    assert f"skipping checkpoint {trial_dir / 'checkpoint_000001'}: checksum mismatch for state.pt" in out


def test_a_checkpoint_of_another_shape_is_a_config_error_not_corruption(trial_dir, capsys):
    session = Session(trial_dir, start_from=trial_dir / "checkpoint_000003", first_index=4)
    with pytest.raises(RuntimeError, match="size mismatch"):
        fit(_spec(trial_dir.parents[1], epochs=6, filters=16), session)  # the checkpoint has 8 filters
    assert session.reports == [] and "skipping" not in capsys.readouterr().out
