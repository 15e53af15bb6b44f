"""The driver's one event path (trainer/driver/events.py), fed Tune's hooks as Tune calls them:
what the record and the metrics get, and what each result costs in writes (counted, not timed)."""

from __future__ import annotations

import pickle

import pytest
from ray.exceptions import RayTaskError

from conftest import BASE_SPEC, deep_update
from service.core import storage
from service.core.record import Objective, RecordWriter, SweepStore, new_index
from service.core.spec import SweepSpec
from trainer.driver.events import SweepEvents, trial_error
from trainer.driver.progress import Progress
from trainer.driver.metrics import SweepMetrics


class FakeTrial:
    """What the callback reads of a Tune Trial."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config, self.status, self.error = trial_id, config, "PENDING", None
        self.checkpoint = None  # Tune: the latest checkpoint, what the trial restores from (after a PBT exploit: the donor's)

    def get_error(self):
        return self.error


class Checkpoint:
    def __init__(self, path):
        self.path = path


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _events(tmp_path, n: int, epochs: int = 3, scheduler: dict | None = None, clock=None):
    spec = SweepSpec.model_validate(deep_update(BASE_SPEC, {
        "name": "ev", "storage": {"uri": str(tmp_path)}, "train": {"epochs": epochs, "optimizer": {"lr": {"grid": [1e-3]}}},
        **({"scheduler": scheduler} if scheduler else {})}))
    store = SweepStore(str(tmp_path), "ev")
    objective = Objective(metric="val_acc", mode="max")
    writer = RecordWriter(store, new_index("ev", objective, max_epochs=epochs, num_trials=n, attempt=1),
                          clock=clock or Clock())
    lines: list[str] = []
    metrics = SweepMetrics("ev", planned_trials=n)
    return SweepEvents(spec, writer, Progress(lines.append, None), attempt=1, metrics=metrics), lines, metrics


def _result(epoch: int, acc: float, **extra) -> dict:
    return {"epoch": epoch, "val_acc": acc, "val_loss": 1 - acc, "train_acc": acc, "train_loss": 1 - acc,
            "time_total_s": float(epoch), "val_split": "vs", "resumed_from_epoch": 0, **extra}


def _run(events, trials: list[FakeTrial], epochs: int, clock: Clock) -> int:
    """Tune's order of hooks for a sweep whose trials each report ``epochs`` results. Returns the
    number of results."""
    results = 0
    events.on_step_begin(0, trials)
    for trial in trials:
        trial.status = "RUNNING"
        events.on_trial_start(0, trials, trial)
        for epoch in range(1, epochs + 1):
            events.on_trial_result(0, trials, trial, _result(epoch, 0.5 + epoch / 100))
            events.on_checkpoint(0, trials, trial, Checkpoint(f"{events.writer.store.uri}/{trial.trial_id}/checkpoint_{epoch - 1:06d}"))
            results += 1
            clock.now += 0.01
        trial.status = "TERMINATED"
        events.on_trial_complete(0, trials, trial)
        events.on_step_begin(0, trials)
    return results


@pytest.mark.parametrize("n", [30, 300])
def test_every_result_costs_one_record_write_whatever_the_number_of_trials(tmp_path, n):
    """300 trials cost the driver the same record writes per result as 30: the trial's own record
    once per event, and the index only at its bounded rate."""
    clock = Clock()
    events, _, _ = _events(tmp_path, n, clock=clock)
    trials = [FakeTrial(f"t_{i:05d}", {"train.optimizer.lr": 1e-3}) for i in range(n)]
    before = storage.WRITES.copy()
    index_writes_before = _count_index_writes(events)
    results = _run(events, trials, epochs=3, clock=clock)
    trial_writes = storage.WRITES["writes"] - before["writes"] - (_count_index_writes(events) - index_writes_before)
    # per trial: start, 3 results, complete
    assert trial_writes == n * (1 + 3 + 1)
    assert trial_writes / results == pytest.approx(5 / 3)
    # index writes: at most one per index_interval (2 s) of (simulated) time, plus the first
    assert _count_index_writes(events) - index_writes_before <= clock.now / 2.0 + 1


def _count_index_writes(events) -> int:
    return events.writer.index_writes


def test_the_callback_classifies_completion_stops_exploits_and_errors_once_for_every_sink(tmp_path):
    clock = Clock()
    events, lines, metrics = _events(tmp_path, 3, epochs=4, clock=clock)
    a, b, c = (FakeTrial(t, {"train.optimizer.lr": 1e-3}) for t in ("t_a", "t_b", "t_c"))
    trials = [a, b, c]
    events.on_step_begin(0, trials)
    for t in trials:
        events.on_trial_start(0, trials, t)
    for epoch in range(1, 5):
        events.on_trial_result(0, trials, a, _result(epoch, 0.6 + epoch / 100))
        events.on_checkpoint(0, trials, a, Checkpoint(f"{tmp_path}/ev/t_a/checkpoint_{epoch - 1:06d}"))
    events.on_trial_complete(0, trials, a)
    events.on_trial_result(0, trials, b, _result(1, 0.5))
    events.on_trial_complete(0, trials, b)  # 1 of 4 epochs: the scheduler stopped it
    # c continues from a's checkpoint (a PBT exploit), then fails for good
    events.on_trial_result(0, trials, c, _result(3, 0.7, resumed_from_epoch=2, restored_weights="w",
                                                 restored_from=f"{tmp_path}/ev/t_a/checkpoint_000001"))
    c.error = RayTaskError("fit", "Traceback ...", ValueError("lr too high\nmore"))
    events.on_trial_error(0, trials, c)
    index = events.finish()

    store = SweepStore(str(tmp_path), "ev")
    assert store.read_index() == index
    by_id = {t.trial_id: t for t in index.trials}
    assert by_id["t_a"].status == "terminated" and by_id["t_a"].stop_reason == "completed all epochs"
    assert by_id["t_b"].status == "stopped_early" and by_id["t_b"].stop_reason == "fifo scheduler"
    assert by_id["t_c"].status == "error"
    record = store.read_trial("t_c")
    assert record.error.type == "ValueError" and record.error.message.startswith("lr too high")
    assert record.error.log == store.trial_log_uri("t_c")
    assert [(x.donor, x.epoch) for x in record.exploits] == [("t_a", 2)]
    assert index.best_trial == "t_c" and index.trial_states == {"terminated": 1, "stopped_early": 1, "error": 1}
    kept = store.read_trial("t_a").checkpoints  # keep: 2 → the 2 best (epochs 3, 4; 4 is also the latest), once it ended
    assert [c.epoch for c in kept] == [3, 4] and kept[-1].uri.endswith("checkpoint_000003")
    # the same classification reached the metrics
    assert [metrics.state(t) for t in ("t_a", "t_b", "t_c")] == ["terminated", "stopped_early", "error"]
    text = metrics.exposition().decode()
    assert 'sweep_early_stops_total{sweep="ev"} 1.0' in text
    assert 'sweep_pbt_exploits_total{sweep="ev"} 1.0' in text
    assert 'sweep_trial_errors_total{sweep="ev"} 1.0' in text
    # one line on the terminal for the error, no traceback
    errors = [line for line in lines if "failed" in line]
    assert errors == ["trial t_c failed: ValueError: lr too high (traceback: sweepctl logs ev --trial t_c)"]


def test_an_error_keeps_the_trials_own_exception_type_from_tunes_forms():
    wrapped = RayTaskError("fit", "Traceback (most recent call last):\n ...\nKeyError: 'x'", KeyError("x"))
    assert trial_error(wrapped, log="L", attempt=1).type == "KeyError"
    text = RuntimeError("Traceback (most recent call last):\n  File ...\nFileNotFoundError: [Errno 2] no /data")
    error = trial_error(text, log=None, attempt=3)
    assert (error.type, error.message, error.attempt) == ("FileNotFoundError", "[Errno 2] no /data", 3)


def test_the_callback_pickles_into_tuner_pkl_without_anything_live(tmp_path):
    events, _, _ = _events(tmp_path, 1)
    copy = pickle.loads(pickle.dumps(events))
    assert copy.__dict__ == {}


def test_retention_keeps_the_best_k_and_the_latest_and_deletes_the_rest_once_the_trial_ended(tmp_path):
    from service.core.record import CheckpointRef
    from trainer.driver.events import retained

    events, _, _ = _events(tmp_path, 1, epochs=5)
    trial = FakeTrial("t_r", {"train.optimizer.lr": 1e-3})
    events.on_step_begin(0, [trial])
    events.on_trial_start(0, [trial], trial)
    for epoch, acc in enumerate([0.5, 0.9, 0.6, 0.8, 0.4], 1):
        events.on_trial_result(0, [trial], trial, _result(epoch, acc))
        path = tmp_path / "ev" / "t_r" / f"checkpoint_{epoch - 1:06d}"
        path.mkdir(parents=True)
        (path / "state.pt").write_bytes(b"x")
        events.on_checkpoint(0, [trial], trial, Checkpoint(str(path)))
    # nothing is deleted while the trial may still be restored from any of them (pause, restart, PBT)
    assert len(list((tmp_path / "ev" / "t_r").glob("checkpoint_*"))) == 5
    events.on_trial_complete(0, [trial], trial)
    record = events.writer.trials["t_r"]
    # keep: 2 → epochs 2 (0.9) and 4 (0.8), plus the latest (5), on disk and in the record
    assert [c.epoch for c in record.checkpoints] == [2, 4, 5]
    assert sorted(p.name for p in (tmp_path / "ev" / "t_r").glob("checkpoint_*")) == [
        "checkpoint_000001", "checkpoint_000003", "checkpoint_000004"]
    assert record.checkpoint.endswith("checkpoint_000001")  # the best kept one
    min_loss = Objective(metric="val_loss", mode="min")
    refs = [CheckpointRef(uri=str(i), epoch=i, objective=v) for i, v in enumerate([0.3, 0.1, None, 0.2], 1)]
    assert [c.epoch for c in retained(refs, 1, min_loss)] == [2, 4]
    assert retained(refs, None, min_loss) == refs


def test_a_checkpoint_a_pbt_exploiter_will_restore_outlives_its_donors_retention(tmp_path):
    """PBT hands a trial the donor's latest checkpoint; the trial restores it when it restarts,
    which may be after the donor ended. Retention (at the donor's end, and the end-of-sweep pass)
    keeps that checkpoint while an unfinished trial will restore from it, and deletes it once none will."""
    events, _, _ = _events(tmp_path, 2, epochs=5)
    donor, exploiter = FakeTrial("t_d", {"train.optimizer.lr": 1e-3}), FakeTrial("t_e", {"train.optimizer.lr": 1e-3})
    trials = [donor, exploiter]
    events.on_step_begin(0, trials)
    events.on_trial_start(0, trials, donor)
    paths = []
    for epoch, acc in enumerate([0.5, 0.9, 0.6, 0.8, 0.4], 1):
        events.on_trial_result(0, trials, donor, _result(epoch, acc))
        path = tmp_path / "ev" / "t_d" / f"checkpoint_{epoch - 1:06d}"
        path.mkdir(parents=True)
        (path / "state.pt").write_bytes(b"x")
        paths.append(path)
        donor.checkpoint = Checkpoint(str(path))
        events.on_checkpoint(0, trials, donor, donor.checkpoint)
    exploiter.status, exploiter.checkpoint = "PAUSED", Checkpoint(str(paths[2]))  # exploited at epoch 3, not restarted yet
    donor.status = "TERMINATED"
    events.on_trial_complete(0, trials, donor)
    # keep: 2 → epochs 2 and 4 plus the latest (5); epoch 1 goes, epoch 3 stays for the exploiter
    assert [p.exists() for p in paths] == [False, True, True, True, True]
    assert [c.epoch for c in events.writer.trials["t_d"].checkpoints] == [2, 3, 4, 5]
    events.apply_pending_retention(snapshot_landed=True)  # an interrupted sweep's last pass: still to be restored
    assert paths[2].exists()
    exploiter.checkpoint = Checkpoint(str(tmp_path / "ev" / "t_e" / "checkpoint_000003"))  # restored, saved its own
    events.apply_pending_retention(snapshot_landed=True)
    assert [p.exists() for p in paths] == [False, True, False, True, True]
    assert [c.epoch for c in events.writer.trials["t_d"].checkpoints] == [2, 4, 5]


def test_the_progress_line_counts_states_and_names_the_best_trial(tmp_path):
    from trainer.driver.progress import progress_line

    events, _, _ = _events(tmp_path, 2)
    assert progress_line(events.writer.snapshot()).endswith("2 trials: none created yet | no result yet")
    trial = FakeTrial("t_p", {"train.optimizer.lr": 1e-3})
    events.on_step_begin(0, [trial])
    events.on_trial_start(0, [trial], trial)
    events.on_trial_result(0, [trial], trial, _result(1, 0.75))
    line = progress_line(events.writer.snapshot(wall_seconds=65))
    assert line == "[01:05] 2 trials: 1 running | best val_acc 0.7500 (trial t_p, epoch 1)"


def test_a_checkpoint_skipped_as_corrupt_is_recorded_said_once_and_never_the_best(tmp_path):
    events, lines, _ = _events(tmp_path, 2, epochs=5)
    own, donor = FakeTrial("t_s", {"train.optimizer.lr": 1e-3}), FakeTrial("t_d", {"train.optimizer.lr": 1e-3})
    trials = [own, donor]
    events.on_step_begin(0, trials)
    for trial in trials:
        events.on_trial_start(0, trials, trial)
    ckpt = {t.trial_id: [f"{tmp_path}/ev/{t.trial_id}/checkpoint_{k:06d}" for k in range(3)] for t in trials}
    for epoch, acc in enumerate([0.5, 0.6, 0.9], 1):  # epoch 3 (the corrupt one) would be the best
        for trial in trials:
            events.on_trial_result(0, trials, trial, _result(epoch, acc))
            events.on_checkpoint(0, trials, trial, Checkpoint(ckpt[trial.trial_id][epoch - 1]))
    events.on_trial_recover(0, trials, own)
    skipped = [{"uri": ckpt["t_s"][2], "reason": "checksum mismatch for state.pt in checkpoint_000002: ..."},
               {"uri": ckpt["t_d"][2], "reason": "checkpoint_000002 is not in storage"}]  # a donor's, earlier
    after_restore = _result(3, 0.7, resumed_from_epoch=2, restored_from=ckpt["t_s"][1], restore_skipped=skipped)
    events.on_trial_result(0, trials, own, after_restore)
    record, donor_record = events.writer.trials["t_s"], events.writer.trials["t_d"]
    assert [(s.uri, s.reason, s.attempt, s.resumed_from_epoch) for s in record.skipped_checkpoints] == [
        (ckpt["t_s"][2], skipped[0]["reason"], 1, 2), (ckpt["t_d"][2], skipped[1]["reason"], 1, 2)]
    assert [c.uri for c in record.checkpoints] == ckpt["t_s"][:2] and record.checkpoint == ckpt["t_s"][1]
    assert [c.uri for c in donor_record.checkpoints] == ckpt["t_d"][:2] and donor_record.checkpoint == ckpt["t_d"][1]
    assert SweepStore(str(tmp_path), "ev").read_trial("t_d").checkpoint == ckpt["t_d"][1]  # written too
    assert not record.exploits  # restored from its own checkpoint
    said = [line for line in lines if "corrupt" in line]
    assert said == [f"trial t_s skipped corrupt checkpoints {ckpt['t_s'][2]} ({skipped[0]['reason']}); "
                    f"{ckpt['t_d'][2]} ({skipped[1]['reason']}); restored from epoch 2"]
    # The same corrupt checkpoint found again at a later restore: recorded and said once.
    events.on_trial_result(0, trials, own, {**after_restore, "restore_skipped": skipped[:1]})
    assert len(record.skipped_checkpoints) == 2 and len([line for line in lines if "corrupt" in line]) == 1
    stored = SweepStore(str(tmp_path), "ev").read_trial("t_s")
    assert stored.skipped_checkpoints == record.skipped_checkpoints
