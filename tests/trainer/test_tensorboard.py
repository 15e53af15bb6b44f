"""Each trial's TensorBoard run (trainer/tensorboard.py), read back with TensorBoard's own readers.

Without Ray: the writer alone (local files, a failing disk, S3 on moto), and the training loop's
``fit`` run twice as a crash restart runs it. With Ray (slow): a real 2-trial sweep whose event
files hold exactly the record's per-epoch history, and a real ``tensorboard --logdir`` over the
sweep that lists one HParams row per trial with its config and metrics.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import BASE_SPEC, deep_update, point_aws_at
from service.core import storage
from service.core.record import EpochResult, SweepStore, TrialRecord
from service.core.spec import SweepSpec
from trainer import tensorboard
from trainer.tensorboard import SCALARS, TrialBoard, best_tag, trial_board

pytest.importorskip("tensorboard", reason="the test extra's tensorboard reads the event files")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer  # noqa: E402
from tensorboard.plugins.hparams import metadata as hparams_metadata  # noqa: E402

CONFIG = {"model.filters": 8, "train.optimizer.lr": 3e-3, "train.optimizer.name": "adam", "data.augment": ["flip"],
          "model.batchnorm": True}


def f32(value: float) -> float:
    """TensorBoard's scalars are float32."""
    import numpy as np

    return float(np.float32(value))


def read_run(directory: Path | str) -> EventAccumulator:
    run = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})  # 0: keep every event
    run.Reload()
    return run


def series(run: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in run.Scalars(tag)]


def scalars(run: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    """``series``, or [] when the run has no such tag."""
    return series(run, tag) if tag in run.Tags()["scalars"] else []


def session(logdir: Path | str) -> dict[str, dict]:
    """run → {"hparams": the HParams session's values, "metrics": the experiment's metric tags,
    "ended": whether the session ended}, as TensorBoard's hparams plugin reads them."""
    runs = EventMultiplexer()
    runs.AddRunsFromDirectory(str(logdir))
    runs.Reload()
    found = {}
    for run, tags in runs.PluginRunToTagToContent("hparams").items():
        start = hparams_metadata.parse_session_start_info_plugin_data(tags[hparams_metadata.SESSION_START_INFO_TAG])
        experiment = hparams_metadata.parse_experiment_plugin_data(tags[hparams_metadata.EXPERIMENT_TAG])
        found[run] = {
            "hparams": {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()},
            "metrics": [m.name.tag for m in experiment.metric_infos],
            "ended": hparams_metadata.SESSION_END_INFO_TAG in tags,
        }
    return found


def metrics(epoch: int, **values) -> dict:
    return {"epoch": epoch, "val_acc": 0.5, "val_loss": 1.0, "train_acc": 0.4, "train_loss": 1.2, "lr": 1e-3,
            "epoch_seconds": 0.25, "train_samples": 1000, "resumed_from_epoch": 0, "val_split": "abc123",
            **values}


# ============================================================================ the writer, no Ray
def test_every_epoch_lands_as_scalars_and_the_config_as_one_hparams_session(tmp_path):
    said: list[str] = []
    board = TrialBoard(str(tmp_path / "t1" / "tensorboard"), hparams=CONFIG, objective="val_acc", mode="max",
                       epochs=3, say=said.append)
    reported = [metrics(1, val_acc=0.6), metrics(2, val_acc=0.55, checkpoint_bytes=2048), metrics(3, val_acc=0.7)]
    for epoch in reported:
        board.epoch(epoch)

    assert said == []
    assert [p.name for p in (tmp_path / "t1" / "tensorboard").iterdir()] == ["events.out.tfevents.000001.0000.trial"]
    run = read_run(tmp_path / "t1" / "tensorboard")
    for key in SCALARS:
        assert scalars(run, key) == [(m["epoch"], f32(m[key])) for m in reported if key in m], key
    assert "val_split" not in run.Tags()["scalars"]  # text, not a number
    assert series(run, "best_val_acc") == [(1, f32(0.6)), (2, f32(0.6)), (3, f32(0.7))]
    assert session(tmp_path) == {"t1/tensorboard": {
        "hparams": {**CONFIG, "model.filters": 8.0, "data.augment": '["flip"]'},  # lists as JSON text
        "metrics": ["best_val_acc", "val_acc", "val_loss", "train_acc", "train_loss"],
        "ended": True,  # the last epoch of the budget ends the session
    }}


def test_a_restart_writes_a_new_file_and_its_re_run_epochs_replace_the_earlier_attempts(tmp_path):
    """A crash after epoch 3, restored from the checkpoint of epoch 2: epoch 3 runs again. The
    record keeps the re-run's; so does TensorBoard, and the best so far comes from the record."""
    store = SweepStore(str(tmp_path), "sweep")
    spec = SweepSpec.model_validate(deep_update(BASE_SPEC, {"name": "sweep", "storage": {"uri": str(tmp_path)},
                                                            "train": {"epochs": 4}, "objective": {"metric": "val_loss", "mode": "min"}}))
    first = trial_board(spec, "t1", CONFIG, first_epoch=1)
    for epoch, loss in ((1, 0.9), (2, 0.5), (3, 0.8)):
        first.epoch(metrics(epoch, val_loss=loss))
    # what the driver recorded of the first attempt
    history = [EpochResult(epoch=e, val_loss=v) for e, v in ((1, 0.9), (2, 0.5), (3, 0.8))]
    storage.write_text_atomic(store.trial_record_uri("t1"), TrialRecord(trial_id="t1", history=history).model_dump_json())

    second = trial_board(spec, "t1", {**CONFIG, "model.filters": 16}, first_epoch=3)
    for epoch, loss in ((3, 0.7), (4, 0.4)):
        second.epoch(metrics(epoch, val_loss=loss, resumed_from_epoch=2))

    assert (first.attempt, second.attempt) == (1, 2)
    assert sorted(p.name for p in Path(store.tensorboard_uri("t1")).iterdir()) == [
        "events.out.tfevents.000001.0000.trial", "events.out.tfevents.000002.0000.trial"]
    run = read_run(store.tensorboard_uri("t1"))
    assert series(run, "val_loss") == [(1, f32(0.9)), (2, f32(0.5)), (3, f32(0.7)), (4, f32(0.4))]
    assert series(run, "resumed_from_epoch") == [(1, 0), (2, 0), (3, 2), (4, 2)]
    assert series(run, "best_val_loss") == [(1, f32(0.9)), (2, f32(0.5)), (3, f32(0.5)), (4, f32(0.4))]
    # TensorBoard keeps a run's first session start: the config the trial began with.
    assert session(store.uri)["t1/tensorboard"]["hparams"]["model.filters"] == 8.0


def test_a_failing_disk_warns_once_never_raises_and_the_next_good_epoch_writes_what_was_missed(tmp_path):
    blocker = tmp_path / "t1"
    blocker.write_text("a file where the trial's directory should be")
    said: list[str] = []
    board = TrialBoard(str(blocker / "tensorboard"), hparams=CONFIG, objective="val_acc", mode="max", epochs=9,
                       say=said.append)
    board.epoch(metrics(1))
    board.epoch(metrics(2))
    assert len(said) == 1 and "could not write this trial's TensorBoard events" in said[0]

    blocker.unlink()  # the disk is back
    board.epoch(metrics(3))
    assert len(said) == 1
    assert [s for s, _ in series(read_run(blocker / "tensorboard"), "val_acc")] == [1, 2, 3]


def test_a_half_written_file_is_left_behind_for_a_fresh_one(tmp_path, monkeypatch):
    """A write that fails after some bytes landed: later epochs go to the attempt's next file,
    and TensorBoard still reads every epoch (the torn record ends the first file)."""
    directory = tmp_path / "t1" / "tensorboard"
    board = TrialBoard(str(directory), hparams=CONFIG, objective="val_acc", mode="max", epochs=9, say=lambda _: None)
    board.epoch(metrics(1))
    real_write = tensorboard.os.write

    def torn(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensorboard.os, "write", torn)
    board.epoch(metrics(2))
    monkeypatch.setattr(tensorboard.os, "write", real_write)
    board.epoch(metrics(3))
    assert sorted(p.name for p in directory.iterdir()) == [
        "events.out.tfevents.000001.0000.trial", "events.out.tfevents.000001.0001.trial"]
    assert [s for s, _ in series(read_run(directory), "val_acc")] == [1, 2, 3]


def test_storage_that_cannot_be_listed_means_no_board_and_one_warning(tmp_path, monkeypatch):
    def unreachable(uri):
        raise storage.StorageError(f"cannot reach {uri}")

    monkeypatch.setattr(storage, "list_files", unreachable)
    spec = SweepSpec.model_validate(deep_update(BASE_SPEC, {"storage": {"uri": str(tmp_path)}}))
    said: list[str] = []
    assert trial_board(spec, "t1", CONFIG, first_epoch=1, say=said.append) is None
    assert len(said) == 1 and "no TensorBoard events" in said[0]


def test_on_s3_each_epoch_rewrites_one_object_until_it_is_sealed(s3_server, monkeypatch, tmp_path):
    point_aws_at(s3_server, monkeypatch, tmp_path)
    bucket = f"tb-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=bucket)
    monkeypatch.setattr(tensorboard, "SEGMENT_BYTES", 600)  # a few epochs per object
    store = SweepStore(f"s3://{bucket}/team", "sweep")
    board = TrialBoard(store.tensorboard_uri("t1"), hparams=CONFIG, objective="val_acc", mode="max", epochs=6)
    before = storage.WRITES["writes"]
    for epoch in range(1, 7):
        board.epoch(metrics(epoch, val_acc=epoch / 10))
    assert storage.WRITES["writes"] - before == 6  # one PUT per epoch
    names = storage.list_files(store.tensorboard_uri("t1"))
    assert len(names) > 1 and names == sorted(names) and all(n.startswith("events.out.tfevents.000001.") for n in names)

    local = tmp_path / "download" / "t1" / "tensorboard"
    storage.download_dir(store.tensorboard_uri("t1"), local)
    assert series(read_run(local), "val_acc") == [(e, f32(e / 10)) for e in range(1, 7)]
    assert session(tmp_path / "download")["t1/tensorboard"]["ended"]


# ============================================================================ the loop, no Ray
class Session:
    """What ``fit`` needs of ``ray.tune``: starts from ``start_from``; keeps each reported
    checkpoint as Tune does, as <trial_dir>/checkpoint_<epoch - 1>."""

    def __init__(self, trial_dir: Path, start_from: Path | None = None):
        import ray.train

        self.Checkpoint = ray.train.Checkpoint
        self.trial_dir, self.start_from, self.trial_id = trial_dir, start_from, trial_dir.name
        self.reports: list[dict] = []

    def get_checkpoint(self):
        return self.Checkpoint(str(self.start_from)) if self.start_from else None

    def report(self, metrics: dict, checkpoint=None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            shutil.copytree(checkpoint.path, self.trial_dir / f"checkpoint_{metrics['epoch'] - 1:06d}", dirs_exist_ok=True)


def test_the_training_loop_writes_each_epoch_before_its_report_and_a_restore_continues_the_run(tmp_path):
    from trainer.loop import fit

    spec = SweepSpec.model_validate(deep_update(BASE_SPEC, {"name": "loop", "storage": {"uri": str(tmp_path)},
                                                            "train": {"epochs": 4}}))
    store = SweepStore(str(tmp_path), "loop")
    trial_dir = Path(store.path("t1"))
    trial_dir.mkdir(parents=True)
    first = Session(trial_dir)
    fit(spec, first, hparams={"model.filters": 8})
    # the driver's record of it, then a crash restart from the checkpoint of epoch 2: epochs 3-4 again
    storage.write_text_atomic(store.trial_record_uri("t1"), TrialRecord(
        trial_id="t1", history=[EpochResult.model_validate(r) for r in first.reports]).model_dump_json())
    second = Session(trial_dir, start_from=trial_dir / "checkpoint_000001")
    fit(spec, second, hparams={"model.filters": 8})

    history = first.reports[:2] + second.reports  # as the record keeps it: the re-run's epochs win
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and second.reports[0]["resumed_from_epoch"] == 2
    run = read_run(store.tensorboard_uri("t1"))
    for key in ("val_acc", "val_loss", "train_acc", "train_loss", "lr", "epoch_seconds", "resumed_from_epoch"):
        assert series(run, key) == [(r["epoch"], f32(r[key])) for r in history], key
    assert series(run, "best_val_acc")[-1] == (4, f32(max(r["val_acc"] for r in history)))


# ============================================================================ a real sweep
@pytest.mark.slow
def test_a_sweeps_trials_each_write_their_history_and_config_and_tensorboard_shows_them(ray_local, make_spec):
    from trainer.driver.sweep import run_sweep

    spec = make_spec(name="tb", model={"filters": {"grid": [4, 8]}})
    index = run_sweep(spec, echo=lambda _: None)
    store = SweepStore(spec.storage.uri, "tb")
    trials = store.read_trials(index)
    assert len(trials) == 2 and all(t.status == "terminated" for t in trials)

    for trial in trials:
        run = read_run(store.tensorboard_uri(trial.trial_id))
        assert [h.epoch for h in trial.history] == [1, 2]
        for key in SCALARS:  # every per-epoch number of the record, each epoch (and no other)
            expected = [(h.epoch, f32(getattr(h, key))) for h in trial.history if getattr(h, key) is not None]
            assert scalars(run, key) == expected, (trial.trial_id, key)
        assert series(run, best_tag("val_acc"))[-1] == (2, f32(trial.best.val_acc))
    sessions = session(store.uri)
    assert sessions == {f"{t.trial_id}/tensorboard": {
        "hparams": {"model.filters": float(t.config["model.filters"])},
        "metrics": ["best_val_acc", "val_acc", "val_loss", "train_acc", "train_loss"],
        "ended": True,
    } for t in trials}

    # `tensorboard --logdir <storage>/<sweep>`, as a user runs it: one HParams row per trial
    groups = _tensorboard_session_groups(Path(store.uri), expect=len(trials))
    assert {g["name"]: (g["hparams"], {m["name"]["tag"]: m["value"] for m in g["metricValues"]}) for g in groups} == {
        f"{t.trial_id}/tensorboard": (
            {"model.filters": float(t.config["model.filters"])},
            {"best_val_acc": f32(t.best.val_acc), "val_acc": f32(t.history[-1].val_acc),
             "val_loss": f32(t.history[-1].val_loss), "train_acc": f32(t.history[-1].train_acc),
             "train_loss": f32(t.history[-1].train_loss)},
        ) for t in trials}


def _tensorboard_session_groups(logdir: Path, expect: int, timeout_s: float = 90) -> list[dict]:
    """Start the real TensorBoard on ``logdir`` (its default loader) and ask its HParams plugin for
    the session groups until ``expect`` of them are there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
                               "--port", str(port), "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    body = json.dumps({"experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
                       "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]})
    groups: list[dict] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(groups) < expect:
            time.sleep(1)
            assert server.poll() is None, server.stderr.read()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/data/plugin/hparams/session_groups",
                                             data=body.encode(), headers={"Content-Type": "application/json",
                                                                          "X-XSRF-Protected": "1"})
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    groups = json.loads(answer.read())["sessionGroups"]
            except OSError:  # not serving yet
                continue
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(groups) == expect, groups
    return groups
