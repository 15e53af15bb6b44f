"""Errors no restart can fix are not retried: the trainer's rule (trainer/trainable.py's
``final_error``), fed real exceptions, and the driver's hook into Tune (trainer/driver/retries.py)
on a real Tune ``Trial``. No Ray cluster: the sweeps are in tests/e2e/test_final_errors.py."""

from __future__ import annotations

import pickle

import pytest
import torch
from ray.exceptions import RayActorError, RayTaskError
from ray.train import ControllerError, WorkerGroupError

from conftest import BASE_SPEC, deep_update
from service.core.errors import DataFormatError, FinalTrialError, UserError
from service.core.spec import SweepSpec
from trainer.data.formats import IDX_IMAGES_MAGIC, read_idx
from trainer.driver import retries
from trainer.driver.events import trial_error
from trainer.trainable import final_error


def raised(call) -> BaseException:
    try:
        call()
    except BaseException as err:  # noqa: BLE001 - the exception is what the test is about
        return err
    raise AssertionError("did not raise")


def _size_mismatch():
    torch.nn.Linear(4, 2).load_state_dict(torch.nn.Linear(3, 2).state_dict())


def _bad_idx(tmp_path):
    (tmp_path / "images.idx").write_bytes(b"\x00\x00\x08\x01" + bytes(8))
    read_idx(tmp_path / "images.idx", IDX_IMAGES_MAGIC)


FINAL = {
    "missing file": lambda tmp: open(tmp / "nope.pt", "rb"),
    "not a directory": lambda tmp: (tmp / "f").write_text("x") and (tmp / "f" / "x").read_text(),
    "a directory": lambda tmp: (tmp / "d").mkdir() or open(tmp / "d"),
    "bad idx file": _bad_idx,
    "state_dict size mismatch": lambda tmp: _size_mismatch(),
    "linear on the wrong input": lambda tmp: torch.nn.Linear(3, 2)(torch.zeros(4, 5)),
    "conv on the wrong channels": lambda tmp: torch.nn.Conv2d(3, 4, 3)(torch.zeros(1, 1, 8, 8)),
    "invalid spec": lambda tmp: SweepSpec.model_validate({"name": "x"}),
    "user error": lambda tmp: (_ for _ in ()).throw(UserError("fix the spec")),
    "CUDA out of memory": lambda tmp: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")),
    "host out of memory": lambda tmp: (_ for _ in ()).throw(MemoryError()),
}
RETRIED = {
    "connection": lambda tmp: (_ for _ in ()).throw(ConnectionResetError(104, "Connection reset by peer")),
    "permission (an OSError outside the missing-file family)": lambda tmp: (_ for _ in ()).throw(PermissionError(13, "denied")),
    "disk/storage error": lambda tmp: (_ for _ in ()).throw(OSError(5, "Input/output error")),
    "a plain ValueError": lambda tmp: int("three"),
    "a RuntimeError of another kind": lambda tmp: (_ for _ in ()).throw(RuntimeError("[gloo] Connection closed by peer")),
    "a killed worker": lambda tmp: (_ for _ in ()).throw(RayActorError()),
}


@pytest.mark.parametrize("case", FINAL)
def test_errors_a_restart_cannot_fix_are_final_with_the_original_type_and_message(tmp_path, case):
    err = raised(lambda: FINAL[case](tmp_path))
    final = final_error(err)
    assert isinstance(final, FinalTrialError), (case, type(err), err)
    assert (final.type_name, final.message) == (type(err).__name__, str(err))
    copy = pickle.loads(pickle.dumps(final))  # crosses Ray's processes by its three strings
    assert (copy.type_name, copy.message, copy.reason) == (final.type_name, final.message, final.reason)


@pytest.mark.parametrize("case", RETRIED)
def test_everything_else_is_retried(tmp_path, case):
    assert final_error(raised(lambda: RETRIED[case](tmp_path))) is None


def test_a_bad_data_format_is_a_data_format_error_and_still_a_value_error(tmp_path):
    err = raised(lambda: _bad_idx(tmp_path))
    assert isinstance(err, DataFormatError) and isinstance(err, ValueError)
    assert final_error(err).reason == "a bad data format"


def test_an_n_worker_trial_is_final_when_any_ranks_error_is():
    """Ray Train V2's trainer.fit() raises WorkerGroupError({rank: the worker's own exception})."""
    missing = raised(lambda: open("/nonexistent/weights.pt"))
    group = WorkerGroupError("rank 1: ...", {0: RuntimeError("[gloo] Connection closed by peer"), 1: missing})
    final = final_error(group)
    assert (final.type_name, final.message) == ("FileNotFoundError", str(missing))
    assert final_error(WorkerGroupError("...", {0: ConnectionResetError("reset"), 1: RayActorError()})) is None
    assert final_error(ControllerError(RuntimeError("worker group failed to start"))) is None


def _trial(tmp_path, monkeypatch, max_failures: int = 3):
    """A real Tune Trial, without a Ray cluster (its driver-side staging dir under tmp_path)."""
    import ray.train._internal.storage as train_storage
    from ray.tune.experiment.trial import Trial

    monkeypatch.setattr(train_storage, "_get_ray_train_session_dir", lambda: str(tmp_path / "session"))
    trial = Trial("noop", stub=True, config={}, max_failures=max_failures,
                  storage=train_storage.StorageContext(str(tmp_path / "runs"), "exp"))
    trial.init_local_path()
    trial.set_status(Trial.RUNNING)
    return trial


def _task_error(cause: BaseException) -> RayTaskError:
    return RayTaskError("train", f"Traceback (most recent call last):\n...\n{type(cause).__name__}: {cause}", cause)


def test_the_hook_fails_a_final_trial_at_once_and_retries_crashes_as_before(tmp_path, monkeypatch):
    from ray.tune.experiment.trial import Trial

    retries.install()
    hooks = Trial.handle_error, Trial.should_recover
    retries.install()  # idempotent: wrapped once
    assert (Trial.handle_error, Trial.should_recover) == hooks

    trial = _trial(tmp_path, monkeypatch)
    final = FinalTrialError("FileNotFoundError", "no /data/x", "a missing file")
    trial.handle_error(_task_error(final))
    assert trial.run_metadata.num_failures == 1 and not trial.should_recover()
    assert trial.should_recover()  # the note is spent: the next failure is judged on its own
    for _ in range(3):  # a crash (killed worker) and a transient error: retried up to max_failures
        trial.handle_error(RayActorError())
        trial.handle_error(_task_error(ConnectionResetError("reset")))
    assert trial.run_metadata.num_failures == 7 and not trial.should_recover()

    fresh = _trial(tmp_path / "2", monkeypatch)
    fresh.handle_error(_task_error(ConnectionResetError("reset")))
    assert fresh.should_recover()
    # A Ray Train failure holding the marker, and the dual RayTaskError(FinalTrialError) form
    fresh.handle_error(WorkerGroupError("...", {0: RuntimeError("peer"), 1: final}))
    assert not fresh.should_recover()
    fresh.handle_error(_task_error(final).as_instanceof_cause())
    assert not fresh.should_recover()


def test_the_note_never_reaches_tunes_experiment_snapshot(tmp_path, monkeypatch):
    retries.install()
    trial = _trial(tmp_path, monkeypatch)
    trial.handle_error(_task_error(FinalTrialError("FileNotFoundError", "no /x", "a missing file")))
    state, run_metadata = trial.get_json_state()
    assert "sweep_final_error" not in state + run_metadata
    assert "temporary_state" not in trial.__getstate__()


def test_the_record_keeps_the_original_type_and_message_and_says_it_was_not_retried():
    final = FinalTrialError("FileNotFoundError", "[Errno 2] No such file: '/data/x'", "a missing file")
    error = trial_error(pickle.loads(pickle.dumps(_task_error(final))), log="L", attempt=1)
    assert (error.type, error.message, error.final) == ("FileNotFoundError", "[Errno 2] No such file: '/data/x'", True)
    # Tune's text form only (no pickled error file)
    text = RuntimeError("Traceback (most recent call last):\n  File ...\n"
                        "service.core.errors.FinalTrialError: FileNotFoundError: [Errno 2] no /data")
    error = trial_error(text, log=None, attempt=1)
    assert (error.type, error.message, error.final) == ("FileNotFoundError", "[Errno 2] no /data", True)
    assert trial_error(_task_error(ValueError("lr")), log=None, attempt=1).final is False


def test_the_driver_says_in_one_line_that_it_was_not_retried(tmp_path):
    from service.core.record import Objective, RecordWriter, SweepStore, new_index
    from trainer.driver.events import SweepEvents
    from trainer.driver.progress import Progress

    spec = SweepSpec.model_validate(deep_update(BASE_SPEC, {"name": "fe", "storage": {"uri": str(tmp_path)}}))
    writer = RecordWriter(SweepStore(str(tmp_path), "fe"),
                          new_index("fe", Objective(metric="val_acc", mode="max"), max_epochs=2, num_trials=1, attempt=1))
    lines: list[str] = []
    events = SweepEvents(spec, writer, Progress(lines.append, None), attempt=1)

    class FakeTrial:
        trial_id, config, status = "t_f", {}, "RUNNING"
        error = _task_error(FinalTrialError("FileNotFoundError", "no /data/x", "a missing file"))

        def get_error(self):
            return self.error

    trial = FakeTrial()
    events.on_trial_start(0, [trial], trial)
    events.on_trial_error(0, [trial], trial)
    record = writer.store.read_trial("t_f")
    assert record.status == "error" and record.restarts == 0 and record.error.final
    assert record.stop_reason == "FileNotFoundError: no /data/x"
    assert [line for line in lines if "failed" in line] == [
        "trial t_f failed: FileNotFoundError: no /data/x "
        "(not retried: a restart cannot fix FileNotFoundError; traceback: sweepctl logs fe --trial t_f)"]
