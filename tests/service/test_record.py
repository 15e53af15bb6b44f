"""The sweep record (service/core/record.py): models round-trip, the layout's readers (also of the
old summary.json format), segmented logs, the ranking, and the writer's bounded index rate."""

from __future__ import annotations

import json

import pytest

from service.core import storage
from service.core.record import (
    CheckpointRef, EpochResult, Exploit, Objective, RecordError, RecordWriter, SegmentedLog, SweepIndex, SweepStore, TrialError,
    TrialRecord, new_index, next_log_attempt, ranked, read_segmented_log, trials_body,
)
from service.core.errors import UserError

MAX = Objective(metric="val_acc", mode="max")


def _record(trial_id: str, accs: list[float], **fields) -> TrialRecord:
    history = [EpochResult(epoch=i + 1, val_acc=a, val_loss=1 - a, train_acc=a, train_loss=1 - a, lr=1e-3)
               for i, a in enumerate(accs)]
    return TrialRecord(trial_id=trial_id, status="terminated", config={"train.optimizer.lr": 1e-3},
                       epochs=len(accs), seconds=1.5, history=history, best=MAX.best_epoch(history), **fields)


def test_a_full_trial_record_and_index_round_trip_through_json():
    record = _record(
        "t_00001", [0.5, 0.7, 0.6], restarts=1,
        checkpoints=[CheckpointRef(uri="/r/s/t_00001/checkpoint_000001", epoch=2, objective=0.7)],
        exploits=[Exploit(epoch=2, donor="t_00000", donor_checkpoint="s3://b/p/s/t_00000/checkpoint_000001",
                          restored_weights="abc", config={"train.optimizer.lr": 2e-3})],
        error=TrialError(type="ValueError", message="boom\nsecond line", log="s3://b/p/s/t_00001/logs", attempt=2),
        val_split="f00d", log="s3://b/p/s/t_00001/logs",
    )
    assert TrialRecord.model_validate_json(record.model_dump_json()) == record
    index = new_index("s", MAX, max_epochs=3, num_trials=2, attempt=2)
    index.trials = [record.summary(), _record("t_00000", [0.9]).summary()]
    index.best_trial = "t_00000"
    again = SweepIndex.model_validate_json(index.model_dump_json())
    assert again == index
    assert again.best.trial_id == "t_00000" and again.best.best.val_acc == 0.9
    assert record.summary().best.epoch == 2  # the best epoch, not the last


def test_ranked_is_best_first_with_ties_by_trial_id_and_unscored_trials_left_out():
    trials = [_record("b", [0.8]), _record("a", [0.8]), _record("c", [0.9]), TrialRecord(trial_id="d")]
    assert [t.trial_id for t in ranked(trials, MAX)] == ["c", "a", "b"]
    loss = Objective(metric="val_loss", mode="min")
    # _record sets val_loss = 1 - val_acc: y (loss 0.7) beats x (loss 0.9)
    assert [t.trial_id for t in ranked([_record("x", [0.1]), _record("y", [0.3])], loss)] == ["y", "x"]


def test_the_store_reads_what_the_writer_wrote_and_a_missing_sweep_is_none(tmp_path):
    store = SweepStore(str(tmp_path), "s")
    assert store.read_index() is None and store.read_trial("t_1") is None and store.read_trial_log("t_1") is None
    writer = RecordWriter(store, new_index("s", MAX, max_epochs=2, num_trials=2, attempt=1))
    for trial_id, accs in (("t_1", [0.4, 0.6]), ("t_2", [0.7])):
        record = writer.trial(trial_id, {"model.filters": 8})
        writer.set_status(record, "running")
        for i, acc in enumerate(accs, 1):
            writer.add_result(record, EpochResult(epoch=i, val_acc=acc))
            writer.changed(record)
    writer.write_index("finished", wall_seconds=3.0)
    index = store.read_index()
    assert index.status == "finished" and index.trial_states == {"running": 2} and index.best_trial == "t_2"
    assert [t.trial_id for t in store.read_trials(index)] == ["t_1", "t_2"]
    assert store.read_trial("t_1").history == writer.trials["t_1"].history


def test_a_sweep_of_the_old_format_is_read_from_its_summary_json(tmp_path):
    old = {
        "sweep": "old", "status": "finished", "objective": {"metric": "val_acc", "mode": "max"}, "max_epochs": 2,
        "num_trials": 1, "trial_states": {"terminated": 1}, "started_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:01:00+00:00", "driver_attempt": 1, "wall_seconds": 12.0, "best_trial": "a_1",
        "best": {"trial_id": "a_1"},
        "trials": [{"trial_id": "a_1", "config": {"train.optimizer.lr": 0.01}, "status": "terminated",
                    "stop_reason": "completed all epochs", "epochs": 2, "seconds": 3.0, "restarts": 0,
                    "history": [{"epoch": 1, "val_acc": 0.5, "attempt": 1}, {"epoch": 2, "val_acc": 0.75, "attempt": 1}],
                    "best": {"epoch": 2, "val_acc": 0.75, "attempt": 1}, "checkpoint": "/x/old/a_1/checkpoint_000001",
                    "exploits": [], "val_split": "ab"}],
    }
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps(old))
    (tmp_path / "old" / "driver.log").write_text("a line\n")
    store = SweepStore(str(tmp_path), "old")
    index = store.read_index()
    assert index.best.trial_id == "a_1" and index.best.best.val_acc == 0.75 and index.wall_seconds == 12.0
    assert [h.val_acc for h in store.read_trial("a_1").history] == [0.5, 0.75]
    assert store.read_trials()[0].checkpoint == "/x/old/a_1/checkpoint_000001"
    assert store.read_driver_log() == "a line\n"


def test_an_unreadable_record_is_one_clear_error_naming_the_object(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({"sweep": "s", "objective": {"metric": "val_acc"}}))
    with pytest.raises(RecordError, match=r"sweep\.json is not a sweep record .*objective\.mode"):
        SweepStore(str(tmp_path), "s").read_index()


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "", "x" * 200])
def test_trial_ids_never_leave_the_sweep_directory(tmp_path, bad):
    with pytest.raises(RecordError, match="not a trial id"):
        SweepStore(str(tmp_path), "s").trial_record_uri(bad)


def test_trials_body_filters_and_sorts_and_refuses_an_unknown_key():
    index = new_index("s", MAX, max_epochs=3, num_trials=3, attempt=1)
    index.trials = [_record("a", [0.5]).summary(), _record("b", [0.9, 0.8]).summary(), TrialRecord(trial_id="c").summary()]
    assert [t["trial_id"] for t in trials_body(index)["trials"]] == ["b", "a", "c"]  # unscored last
    assert [t["trial_id"] for t in trials_body(index, sort="val_loss")["trials"]] == ["b", "a", "c"]
    assert [t["trial_id"] for t in trials_body(index, sort="epochs")["trials"]][0] == "b"
    assert trials_body(index, status="pending")["total"] == 1
    with pytest.raises(UserError, match="cannot sort by 'colour'"):
        trials_body(index, sort="colour")


# ------------------------------------------------------------------------------ segmented logs
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_segmented_log_appends_in_bounded_objects_and_reads_back_whole(tmp_path, monkeypatch):
    monkeypatch.setattr("service.core.record.SEGMENT_BYTES", 100)
    clock = Clock()
    log = SegmentedLog(str(tmp_path / "logs"), attempt=1, interval=2.0, clock=clock)
    lines = [f"line {i:03d} {'x' * 20}\n" for i in range(30)]
    for line in lines:
        log.write(line)
        clock.now += 0.1
    log.close()
    names = storage.list_files(str(tmp_path / "logs"))
    assert len(names) == -(-len("".join(lines)) // 100)  # ceil: full segments, then the rest
    assert all(len((tmp_path / "logs" / n).read_text()) <= 100 for n in names)
    text = read_segmented_log(str(tmp_path / "logs"), header=lambda a, r: f"== {a} {r}\n")
    assert text == "== 1 trial\n" + "".join(lines)
    assert next_log_attempt(str(tmp_path / "logs")) == 2


def test_past_its_cap_a_log_keeps_the_head_the_tail_and_says_what_it_dropped(tmp_path):
    log = SegmentedLog(str(tmp_path / "logs"), attempt=1, cap_bytes=1000, tail_bytes=200)
    for i in range(500):
        log.write(f"{i:05d}\n")
    log.write("Traceback (most recent call last):\nValueError: boom\n")
    log.close()
    text = read_segmented_log(str(tmp_path / "logs"), header=lambda a, r: "")
    assert text.startswith("00000\n") and text.endswith("ValueError: boom\n")
    dropped = 500 * 6 + 52 - 1000 - 200
    assert f"[... {dropped} characters dropped" in text
    assert len(text) < 1000 + 200 + 200


def test_each_attempt_of_a_trial_logs_apart_and_reads_in_order(tmp_path):
    store = SweepStore(str(tmp_path), "s")
    for attempt in (1, 2):
        log = SegmentedLog(store.trial_log_uri("t_1"), attempt=next_log_attempt(store.trial_log_uri("t_1")))
        log.write(f"run {attempt}\n")
        log.close()
    text = store.read_trial_log("t_1")
    assert text.index("attempt 1") < text.index("run 1") < text.index("attempt 2") < text.index("run 2")


# ------------------------------------------------------------------------------ the writer's rate
def test_the_index_is_written_at_a_bounded_rate_in_bytes(tmp_path):
    """Index writes are at least index_interval apart, and further apart as the index grows:
    bytes per (simulated) second stay under the budget whatever the number of trials."""
    clock = Clock()
    store = SweepStore(str(tmp_path), "s")
    budget = 20_000
    writer = RecordWriter(store, new_index("s", MAX, max_epochs=1, num_trials=500, attempt=1),
                          index_interval=1.0, index_bytes_per_second=budget, clock=clock)
    before = storage.WRITES.copy()
    index_bytes, index_writes, last_size = 0, 0, 0
    for i in range(500):
        record = writer.trial(f"t_{i:05d}")
        writer.add_result(record, EpochResult(epoch=1, val_acc=i / 500))
        writer.changed(record)
        if writer.maybe_write_index(wall_seconds=clock.now):
            last_size = len(storage.read_bytes(store.index_uri))
            index_bytes += last_size
            index_writes += 1
        clock.now += 0.05
    # one write per result for the trial's own record, plus the index writes: nothing else
    assert storage.WRITES["writes"] - before["writes"] == 500 + index_writes
    assert index_writes >= 3
    # 25 simulated seconds: at most one write per second early on, the byte budget once it binds
    assert index_bytes <= budget * clock.now + last_size
    assert last_size > budget  # the index outgrew one second's budget: the rate bound was exercised


def test_sweepctl_logs_follow_prints_a_growing_trial_log_once_and_stops_when_it_finished(tmp_path, capsys, monkeypatch):
    import threading

    from service.cli import main

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))  # no service configured: storage
    monkeypatch.delenv("SWEEPCTL_SERVER", raising=False)
    store = SweepStore(str(tmp_path), "s")
    writer = RecordWriter(store, new_index("s", MAX, max_epochs=2, num_trials=1, attempt=1))
    record = writer.trial("t_1")
    writer.set_status(record, "running")
    writer.changed(record)
    log = SegmentedLog(store.trial_log_uri("t_1"), attempt=1)
    log.write("epoch 1\n")
    log.flush()

    def finish_later():
        import time

        time.sleep(1.0)
        log.write("epoch 2\n")
        log.close()
        writer.set_status(record, "terminated")
        writer.changed(record)

    threading.Thread(target=finish_later).start()
    assert main(["logs", "s", "--trial", "t_1", "--storage", str(tmp_path), "--follow"]) == 0
    out = capsys.readouterr().out
    assert out == "===== trial t_1: attempt 1 =====\nepoch 1\nepoch 2\n"


def test_sweepctl_refuses_a_trial_id_that_is_a_path_without_a_traceback(tmp_path, capsys, monkeypatch):
    from service.cli import main

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    monkeypatch.delenv("SWEEPCTL_SERVER", raising=False)
    writer = RecordWriter(SweepStore(str(tmp_path), "s"), new_index("s", MAX, max_epochs=1, num_trials=1, attempt=1))
    writer.write_index("finished", wall_seconds=1.0)
    assert main(["logs", "s", "--trial", "../../etc", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: not a trial id: '../../etc'") and "Traceback" not in err


# ----------------------------------------------------------------------------- several objectives, constraints
def _scored(trial_id: str, acc: float, params: int, status: str = "terminated", **fields) -> TrialRecord:
    entry = EpochResult(epoch=1, val_acc=acc, params=params)
    return TrialRecord(trial_id=trial_id, status=status, epochs=1, history=[entry], best=entry, **fields)


ACC_PARAMS = [MAX, Objective(metric="params", mode="min")]


def _brute_force_front(trials, objectives) -> set[str]:
    """Non-dominated by the definition, pair by pair (the test's own, independent of the record's)."""
    def values(t):
        return [(-1 if o.mode == "max" else 1) * t.best.metric(o.metric) for o in objectives]
    pool = [t for t in trials if t.status in ("terminated", "stopped_early") and not t.infeasible]
    return {t.trial_id for t in pool
            if not any(all(a <= b for a, b in zip(values(u), values(t))) and values(u) != values(t) for u in pool)}


def test_the_pareto_front_keeps_ties_and_duplicates_and_leaves_out_the_unfinished_and_infeasible():
    from service.core.record import pareto_front

    trials = [
        _scored("a", 0.90, 5000), _scored("b", 0.90, 5000),  # duplicates: neither dominates, both stay
        _scored("c", 0.90, 6000),  # same accuracy, more parameters: dominated by a and b
        _scored("d", 0.80, 1000), _scored("e", 0.80, 1000, status="stopped_early"),
        _scored("f", 0.70, 1000),  # same size as d, worse: dominated
        _scored("g", 0.95, 9000),  # the most accurate: on the front
        _scored("h", 0.99, 100, status="running"),  # would dominate all, but unfinished (Optuna has no value yet)
        _scored("i", 0.99, 100, status="error"),  # Optuna saw it fail
        _scored("j", 0.99, 100, infeasible="inference_ms = 9 breaks 'inference_ms < 5'"),
        TrialRecord(trial_id="k", status="rejected", infeasible="params = 3,000,000 breaks 'params <= 2e6'"),
    ]
    front = pareto_front(trials, ACC_PARAMS)
    assert set(front) == _brute_force_front(trials, ACC_PARAMS) == {"a", "b", "d", "e", "g"}
    assert front == ["g", "a", "b", "d", "e"]  # ranking order: by val_acc, then params, then trial id
    # three objectives: a trial dominated in two may be saved by the third
    third = [*ACC_PARAMS, Objective(metric="inference_ms", mode="min")]
    for t, ms in zip(trials, [1.0, 1.0, 0.5, 2.0, 2.0, 2.0, 3.0, 1.0, 1.0, 1.0]):
        t.history[0].inference_ms = ms
    assert set(pareto_front(trials, third)) == _brute_force_front(trials, third) == {"a", "b", "c", "d", "e", "g"}


def test_ranking_never_ranks_an_infeasible_trial_and_breaks_ties_by_the_next_objective():
    trials = [_scored("a", 0.9, 900), _scored("b", 0.9, 500), _scored("c", 0.95, 100, infeasible="breaks it")]
    assert [t.trial_id for t in ranked(trials, MAX)] == ["a", "b"]  # one objective: ties by trial id
    assert [t.trial_id for t in ranked(trials, MAX, ACC_PARAMS[1:])] == ["b", "a"]  # then by params


def test_constraints_hold_or_say_by_how_much_they_break():
    from service.core.spec import parse_constraint

    params, ms = parse_constraint("params <= 2e6"), parse_constraint("inference_ms < 5")
    assert params.violation(2_000_000) is None and ms.violation(4.99) is None
    assert params.violation(2_000_001) == "params = 2,000,001 breaks 'params <= 2e6'"
    assert ms.violation(5.0) == "inference_ms = 5 breaks 'inference_ms < 5'"
    assert ms.violation(None) == "inference_ms was not reported, so 'inference_ms < 5' cannot hold"


def test_the_writer_judges_constraints_on_results_and_never_makes_an_infeasible_trial_best(tmp_path):
    from service.core.spec import parse_constraint

    index = new_index("s", MAX, max_epochs=3, num_trials=3, attempt=1,
                      constraints=[parse_constraint("inference_ms < 5"), parse_constraint("train_seconds <= 10")])
    writer = RecordWriter(SweepStore(str(tmp_path), "s"), index)
    fast, slow, late = (writer.trial(t) for t in ("fast", "slow", "late"))
    writer.add_result(fast, EpochResult(epoch=1, val_acc=0.8, inference_ms=1.0, train_seconds=2.0))
    writer.add_result(slow, EpochResult(epoch=1, val_acc=0.9, inference_ms=7.5, train_seconds=2.0))
    assert slow.infeasible == "inference_ms = 7.5 breaks 'inference_ms < 5'"
    assert writer.snapshot().best_trial == "fast"  # slow is the more accurate, and infeasible
    # per-epoch metrics: the best epoch among those that keep every constraint
    writer.add_result(late, EpochResult(epoch=1, val_acc=0.85, inference_ms=1.0, train_seconds=6.0))
    writer.add_result(late, EpochResult(epoch=2, val_acc=0.95, inference_ms=1.0, train_seconds=12.0))
    assert late.best.epoch == 1 and late.infeasible is None and writer.snapshot().best_trial == "late"
    writer.reject(fast, "params = 3,000 breaks 'params <= 2000'")  # (as a rejected trial would be, before results)
    assert fast.status == "rejected" and fast.stop_reason.startswith("rejected before training: params = 3,000")
    # re-run from epoch 1 (a restart, measured on a slower machine): no epoch keeps every constraint now
    writer.add_result(late, EpochResult(epoch=1, val_acc=0.85, inference_ms=9.0, train_seconds=5.0))
    assert late.infeasible == "inference_ms = 9 breaks 'inference_ms < 5'"
    assert writer.snapshot().best_trial is None and SweepIndex.model_validate_json(index.model_dump_json()).ranked() == []


def test_a_multi_objective_index_keeps_its_front_current_as_trials_end_and_its_best_on_it(tmp_path):
    index = new_index("s", MAX, max_epochs=2, num_trials=3, attempt=1, objectives=ACC_PARAMS)
    writer = RecordWriter(SweepStore(str(tmp_path), "s"), index)
    big, small, worse = (writer.trial(t) for t in ("big", "small", "worse"))
    for record, accs, params in ((big, [0.95, 0.90], 9000), (small, [0.8, 0.85], 1000), (worse, [0.7], 5000)):
        writer.set_status(record, "running")
        for epoch, acc in enumerate(accs, 1):
            writer.add_result(record, EpochResult(epoch=epoch, val_acc=acc, params=params))
    assert big.best.epoch == 2 and big.best.val_acc == 0.90  # scored at the last epoch: what Optuna was told
    assert writer.snapshot().pareto_front == [] and index.best_trial is None  # none finished yet
    writer.set_status(worse, "terminated")
    assert writer.snapshot().pareto_front == ["worse"] and index.best_trial == "worse"
    writer.set_status(small, "terminated")
    writer.set_status(big, "stopped_early")
    index = writer.snapshot()
    assert index.pareto_front == ["big", "small"] and index.best_trial == "big"
    assert [t.trial_id for t in index.ranked()] == ["big", "small", "worse"]
    body = trials_body(index)
    assert body["pareto_front"] == ["big", "small"] and [o["metric"] for o in body["objectives"]] == ["val_acc", "params"]
    with pytest.raises(ValueError, match="must be the first of objectives"):
        new_index("s", Objective(metric="params", mode="min"), max_epochs=1, num_trials=1, attempt=1, objectives=ACC_PARAMS)


def test_a_segmented_log_that_fails_to_write_keeps_every_segment_for_the_next_flush(tmp_path, monkeypatch):
    """Storage down during a flush: the full segments and the current one are written by the next
    flush, none lost (the flush takes them off its list before writing, outside its text lock)."""
    from service.core import storage
    from service.core.record import SEGMENT_BYTES

    store = SweepStore(str(tmp_path), "sw")
    log = SegmentedLog(store.trial_log_uri("t_1"), attempt=1, flush_on_write=False)
    real_write, calls = storage.write_text_atomic, []

    def failing_second_write(uri, text):
        calls.append(uri)
        if len(calls) == 2:
            raise storage.StorageError("storage is down")
        real_write(uri, text)

    monkeypatch.setattr(storage, "write_text_atomic", failing_second_write)
    text = "x" * (2 * SEGMENT_BYTES) + "the end\n"  # two full segments and a third in progress
    log.write(text)
    assert calls == []  # flush_on_write=False: write() never touches storage
    with pytest.raises(storage.StorageError):
        log.flush()
    log.flush()
    assert len(calls) == 2 + 2  # the failed one and the one after it again; the first is not rewritten
    assert store.read_trial_log("t_1").endswith(text)
