"""The driver's one event path: a Ray Tune callback that classifies each Tune event once and feeds
its sinks — the sweep record (service/core/record.py), the Prometheus exporter
(trainer/driver/metrics.py) and the progress line (trainer/driver/progress.py: on a terminal, the
live table of the trials).

The rules live here and nowhere else:
- "stopped early": a trial completed with fewer epochs than its budget (its own ``train.epochs``
  when that is searched, else the spec's);
- a PBT exploit: the first result after a restore names a checkpoint of *another* trial;
- a trial error keeps the exception's type and message, and points to the trial's log;
- a checkpoint the loop found corrupt at a restore (the result's ``restore_skipped``) is recorded
  once and is no longer among the kept checkpoints of the trial that wrote it.

Every hook costs O(1) in the number of trials: new trials are the tail of Tune's list, and only
the trials this driver saw running are checked for a pause.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from ray.tune import Callback

from service.core import storage
from service.core.errors import TrialRejected
from service.core.record import (
    TOP_LEVEL_JSON, FINISHED_STATES, RESULT_KEYS, CheckpointRef, EpochResult, Exploit, Objective, RecordWriter,
    SkippedCheckpoint, SweepIndex, TrialError, now_iso, violations,
)
from service.core.spec import SweepSpec, config_keys
from trainer.driver.progress import Progress
from trainer.driver.retries import final_marker


class SweepEvents(Callback):
    def __init__(self, spec: SweepSpec, writer: RecordWriter, progress: "Progress", *, attempt: int,
                 metrics=None, on_setup: Callable[[], None] | None = None, seconds_before: float = 0.0,
                 check_stop: Callable[[], None] = lambda: None, experiment_state=None):
        self.spec, self.writer, self.progress, self.metrics = spec, writer, progress, metrics
        self.on_setup = on_setup  # once Ray is up (the exporter's scrape targets for Ray's nodes)
        self.check_stop = check_stop  # raises in Tune's loop when the driver must stop now (fenced out)
        # When Tune's experiment snapshot last landed (trainer/driver/sweep.py ExperimentState):
        # retention waits for one taken after the trial ended. None: delete when the trial ends.
        self.experiment_state = experiment_state
        self._retention_due: dict[str, float] = {}  # trial id → when it ended, for ended trials not yet pruned
        self._retention_checked = 0.0
        self.attempt = attempt
        self.started = time.time()
        self.seconds_before = seconds_before  # wall time of earlier driver attempts
        self._keys = list(dict.fromkeys([*config_keys(spec), *spec.scheduler.mutated()]))
        self._seen = 0  # Tune's trial list only grows: trials[_seen:] are new
        self._running: dict[str, object] = {}  # trial id → Tune trial, for pause detection
        self._unfinished: dict[str, object] = {}  # trial id → Tune trial, for the checkpoints they will restore
        # What the record holds already (a resume's earlier attempts, a warm start's copies) counts
        # in the metrics from the start: trials by state and the best objective cover the sweep.
        for record in writer.trials.values():
            self._sink("trial_restored", record.trial_id, state=record.status, config=record.config,
                       results=[h.model_dump(exclude_none=True) for h in record.history])

    def __getstate__(self):
        # Tune pickles its callbacks into tuner.pkl; a resumed driver brings its own.
        return {}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def wall_seconds(self) -> float:
        return self.seconds_before + time.time() - self.started

    # ---------------------------------------------------------------------- setup
    def setup(self, **info):
        drop_record_copies_from_tune_staging(self.spec.name)
        if self.on_setup is not None:
            self.on_setup()

    # ---------------------------------------------------------------------- Tune hooks
    def on_step_begin(self, iteration, trials, **info):
        self._check_stop()
        for trial in trials[self._seen:]:
            self._added(trial)
            if trial.status not in ("TERMINATED", "ERROR"):
                self._unfinished[trial.trial_id] = trial
        self._seen = len(trials)
        for trial_id, trial in list(self._running.items()):
            if trial.status == "PAUSED":
                del self._running[trial_id]
                self._sink("trial_paused", trial_id)
                record = self.writer.trial(trial_id)
                self.writer.set_status(record, "paused")
                self.writer.changed(record)
        self._tick()

    def on_trial_start(self, iteration, trials, trial, **info):
        record = self._added(trial)
        self._running[trial.trial_id] = trial
        self.writer.set_status(record, "running")
        record.started_at = record.started_at or now_iso()
        self.writer.changed(record)
        self._sink("trial_started", trial.trial_id, config=self._config(trial))  # PBT: the config after an exploit
        self._tick()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._check_stop()
        record = self._added(trial)
        self._running[trial.trial_id] = trial
        if record.status != "running":
            self.writer.set_status(record, "running")
        record.config = self._config(trial)  # PBT mutates configs while trials run
        entry = EpochResult.model_validate(
            {"attempt": self.attempt, **{k: result[k] for k in RESULT_KEYS if k in result}})
        exploit = self._exploit(trial, result, record.config)
        if exploit is not None:
            record.exploits.append(exploit)
            self.progress.say(f"trial {trial.trial_id} took over trial {exploit.donor}'s weights at epoch {exploit.epoch}")
        self._skipped_checkpoints(trial, record, result)
        record.val_split = result.get("val_split", record.val_split)
        record.seconds = float(result.get("time_total_s", record.seconds))
        self.writer.add_result(record, entry)
        self.writer.changed(record)
        if self.metrics is not None:
            self.metrics.trial_result(trial.trial_id, result)
            if exploit is not None:
                self.metrics.pbt_exploit(trial.trial_id)
        self._tick()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        """Tune stored a checkpoint (after the result of its epoch). The record carries it from
        the trial's next write, so a checkpoint costs no record write of its own. Retention
        waits for the trial to end (``_apply_retention``)."""
        if self.writer.fenced():
            return  # another driver owns the sweep: this one registers nothing
        record = self._added(trial)
        latest = record.history[-1] if record.history else None
        # An epoch that breaks a constraint is no best checkpoint: unscored, retention keeps it only as the latest.
        kept = latest is not None and violations(self.writer.index.constraints, latest) is None
        ref = CheckpointRef(uri=self.writer.store.checkpoint_uri(checkpoint.path),
                            epoch=latest.epoch if latest else 0,
                            objective=latest.metric(self.spec.objective.metric) if kept else None)
        record.checkpoints = [c for c in record.checkpoints if c.uri != ref.uri] + [ref]
        record.checkpoint = _best_checkpoint(record.checkpoints, self.writer.index.objective)

    def _retention_after_snapshot(self, record) -> None:
        if self.experiment_state is None:  # no snapshot to wait for (tests of the event path)
            self._apply_retention(record)
        else:
            self._retention_due[record.trial_id] = time.time()

    def apply_pending_retention(self, *, snapshot_landed: bool = False) -> None:
        """Prune the ended trials whose end an experiment snapshot in storage has seen (all of
        them when ``snapshot_landed``: Tune's final snapshot, after ``fit``). Until then the
        snapshot a resume would restore may still name a checkpoint retention would delete."""
        if self.writer.fenced() or not (self._retention_due or snapshot_landed):
            return
        if snapshot_landed:  # also trials that ended under an earlier driver attempt, killed before it pruned them
            due = [t for t, r in self.writer.trials.items() if t in self._retention_due or r.status in FINISHED_STATES]
        else:
            # No snapshot to wait for (the event path's tests): due once ended (a PBT donor's deferral: 2 s on).
            landed = self.experiment_state.landed_at() if self.experiment_state is not None else time.time()
            # An upload of the tiny snapshot file takes well under a second; one that finished
            # 2 s after the trial ended started after it, so it holds the trial as ended.
            due = [t for t, ended in self._retention_due.items() if landed is not None and landed >= ended + 2.0]
        for trial_id in due:
            self._retention_due.pop(trial_id, None)
            record = self.writer.trials[trial_id]
            before = len(record.checkpoints)
            self._apply_retention(record)
            if len(record.checkpoints) != before:
                self.writer.changed(record)

    def _apply_retention(self, record) -> None:
        """Keep the ``checkpoint.keep`` best by the objective plus the latest, delete the rest.
        Ours, not Tune's ``num_to_keep`` (which forces an O(trials) experiment snapshot at every
        checkpoint past it, and may delete the checkpoint its last snapshot names); and only once
        the trial has ended, so nothing a paused, restarting or exploiting trial may still be
        restored from is ever deleted under it."""
        keep = retained(record.checkpoints, self.spec.checkpoint.keep, self.writer.index.objective)
        # PBT: a trial that exploited this one restores from the checkpoint it was handed when it
        # (re)starts, which may come after this one ended. Such a checkpoint stays until no
        # unfinished trial will restore from it; the trial is then looked at again.
        surplus = [c for c in record.checkpoints if c not in keep]
        if surplus:
            in_use = self._checkpoints_to_restore()
            held = [c for c in surplus if c.uri in in_use]
            if held:
                keep += held
                self._retention_due[record.trial_id] = time.time()
        for old in [c for c in record.checkpoints if c not in keep]:
            try:
                storage.delete_tree(old.uri)
            except storage.StorageError as err:  # stays in the record: it is still there
                self.progress.say(f"warning: could not delete {old.uri} ({err})")
                keep.append(old)
        record.checkpoints = [c for c in record.checkpoints if c in keep]
        record.checkpoint = _best_checkpoint(record.checkpoints, self.writer.index.objective)

    def _checkpoints_to_restore(self) -> set[str]:
        """The checkpoints unfinished trials continue from when they (re)start: each one's latest,
        which after a PBT exploit is the donor's."""
        return {self.writer.store.checkpoint_uri(t.checkpoint.path) for t in self._unfinished.values()
                if t.status not in ("TERMINATED", "ERROR") and t.checkpoint is not None}

    def on_trial_complete(self, iteration, trials, trial, **info):
        record = self._added(trial)
        self._running.pop(trial.trial_id, None)
        self._unfinished.pop(trial.trial_id, None)
        budget = int(trial.config.get("train.epochs", self.spec.train.epochs))
        stopped_early = record.epochs < budget
        self.writer.set_status(record, "stopped_early" if stopped_early else "terminated")
        record.stop_reason = f"{self.spec.scheduler.name} scheduler" if stopped_early else "completed all epochs"
        self._retention_after_snapshot(record)
        self.writer.changed(record)
        self._sink("trial_completed", trial.trial_id, stopped_early=stopped_early)
        self._tick()

    def on_trial_recover(self, iteration, trials, trial, **info):
        record = self._added(trial)
        self._running.pop(trial.trial_id, None)
        record.restarts += 1
        self.writer.set_status(record, "pending")
        self.writer.changed(record)
        self._sink("trial_restarted", trial.trial_id)
        self.progress.say(f"trial {trial.trial_id} crashed; restarting from its last checkpoint "
                          f"(log: sweepctl logs {self.spec.name} --trial {trial.trial_id})")
        self._tick()

    def on_trial_error(self, iteration, trials, trial, **info):
        record = self._added(trial)
        self._running.pop(trial.trial_id, None)
        self._unfinished.pop(trial.trial_id, None)
        exception = _exception_of(trial)
        rejected = final_marker(exception)
        if isinstance(rejected, TrialRejected):  # refused before training by a constraint: no failure
            self.writer.reject(record, rejected.message)
            self.writer.changed(record)
            self._sink("trial_rejected", trial.trial_id)
            self.progress.say(f"trial {trial.trial_id} {record.stop_reason}")
            self._tick()
            return
        record.error = trial_error(exception, log=record.log, attempt=record.restarts + 1)
        self.writer.set_status(record, "error")
        record.stop_reason = f"{record.error.type}: {_headline(record.error.message)}"[:300]
        self._retention_after_snapshot(record)
        self.writer.changed(record)
        self._sink("trial_errored", trial.trial_id)
        not_retried = f"not retried: a restart cannot fix {record.error.type}; " if record.error.final else ""
        self.progress.say(f"trial {trial.trial_id} failed: {record.stop_reason} "
                          f"({not_retried}traceback: sweepctl logs {self.spec.name} --trial {trial.trial_id})")
        self._tick()

    # ---------------------------------------------------------------------- helpers
    def _added(self, trial):
        record = self.writer.trials.get(trial.trial_id)
        if record is None:
            record = self.writer.trial(trial.trial_id, self._config(trial))
            self._sink("trial_added", trial.trial_id)
        return record

    def _sink(self, event: str, trial_id: str, **kwargs) -> None:
        if self.metrics is not None:
            getattr(self.metrics, event)(trial_id, **kwargs)

    def _config(self, trial) -> dict:
        """The trial's searched and mutated values, by dotted path."""
        return {k: trial.config[k] for k in self._keys if k in trial.config}

    def _exploit(self, trial, result: dict, config: dict) -> Exploit | None:
        restored_from = result.get("restored_from")  # the loop reports it on the first epoch after a restore
        if not restored_from or Path(restored_from).parent.name == trial.trial_id:
            return None  # a fresh start, or a restart from the trial's own checkpoint
        return Exploit(epoch=result["resumed_from_epoch"], donor=Path(restored_from).parent.name,
                       donor_checkpoint=self.writer.store.checkpoint_uri(restored_from),
                       restored_weights=result.get("restored_weights"), config=config)

    def _skipped_checkpoints(self, trial, record, result: dict) -> None:
        """The loop passed over corrupt checkpoints to restore the trial (the first result after
        the restore names them): each recorded and said once, and dropped from the kept checkpoints
        of the trial that wrote it (a PBT donor's are the donor's), so the best is never one of
        them. Left in storage, for a look at what broke it; retention no longer sees it."""
        known = {s.uri for s in record.skipped_checkpoints}
        resumed = int(result.get("resumed_from_epoch") or 0)
        new = [SkippedCheckpoint(uri=uri, reason=s["reason"], attempt=self.attempt, resumed_from_epoch=resumed)
               for s in result.get("restore_skipped") or ()
               if (uri := self.writer.store.checkpoint_uri(s["uri"])) not in known]
        if not new:
            return
        record.skipped_checkpoints = [*record.skipped_checkpoints, *new]
        for skipped in new:
            owner = self.writer.trials.get(Path(skipped.uri).parent.name)
            if owner is not None and any(c.uri == skipped.uri for c in owner.checkpoints):
                owner.checkpoints = [c for c in owner.checkpoints if c.uri != skipped.uri]
                owner.checkpoint = _best_checkpoint(owner.checkpoints, self.writer.index.objective)
                if owner is not record:
                    self.writer.changed(owner)
        then = f"restored from epoch {resumed}" if result.get("restored_from") else "started fresh (epoch 1)"
        corrupt = "; ".join(f"{s.uri} ({s.reason})" for s in new)
        self.progress.say(f"trial {trial.trial_id} skipped corrupt checkpoint{'s' if len(new) > 1 else ''} "
                          f"{corrupt}; {then}")

    def _check_stop(self) -> None:
        self.check_stop()
        if self.writer.full is not None:  # storage full: trials cannot checkpoint, the record cannot grow
            raise self.writer.full

    def _tick(self) -> None:
        """At a bounded rate: the index, retention of ended trials, and the progress line."""
        if self._retention_due and time.monotonic() - self._retention_checked >= 2.0:
            self._retention_checked = time.monotonic()
            self.apply_pending_retention()
        wall = self.wall_seconds()
        if self.writer.maybe_write_index(wall):
            self.progress.status(self.writer.index, self.writer.trials)
        self.progress.maybe_flush()

    def stopped(self, status: str, reason: str) -> None:
        """The sweep stopped early (interrupt, storage full, a driver error): trials that were
        running are paused (a resume continues them from their last checkpoint), and the index
        says what happened (one try: an interrupt must not wait on storage)."""
        for record in self.writer.trials.values():
            if record.status == "running":
                self.writer.set_status(record, "paused")
                record.stop_reason = f"sweep {status}: {reason}"
                try:
                    self.writer.changed(record)
                except Exception:
                    pass  # the index below carries the state too
        self.writer.write_index(status, self.wall_seconds(), stop_reason=reason)
        self.progress.status(self.writer.index, self.writer.trials)
        self.progress.close()

    def finish(self, status: str = "finished") -> SweepIndex:
        """The final index (each trial's record already names its best kept checkpoint)."""
        for _ in range(30):  # the final index must land: retry through a storage outage
            if self.writer.write_index(status, self.wall_seconds()) or self.writer.fenced():
                break
            self.progress.say("warning: could not write the final sweep index; retrying in 10 s")
            time.sleep(10)
        self.progress.status(self.writer.index, self.writer.trials)
        self.progress.close()
        return self.writer.index


def retained(checkpoints: list[CheckpointRef], keep: int | None, objective: Objective) -> list[CheckpointRef]:
    """The checkpoints retention keeps: the ``keep`` best by the objective (earlier first among
    equals), and always the latest (what a restart or a resumed sweep continues from)."""
    if keep is None or len(checkpoints) <= keep:
        return list(checkpoints)
    kept = {id(c) for c in _by_objective(checkpoints, objective)[:keep]} | {id(checkpoints[-1])}
    return [c for c in checkpoints if id(c) in kept]


def _best_checkpoint(checkpoints: list[CheckpointRef], objective: Objective) -> str | None:
    """The best scored checkpoint's URI (the latest when none is scored)."""
    best = _by_objective(checkpoints, objective)
    return best[0].uri if best else (checkpoints[-1].uri if checkpoints else None)


def _by_objective(checkpoints: list[CheckpointRef], objective: Objective) -> list[CheckpointRef]:
    sign = -1 if objective.mode == "max" else 1
    return sorted((c for c in checkpoints if c.objective is not None), key=lambda c: (sign * c.objective, c.epoch))


def _headline(message: str) -> str:
    """An error message's telling line: its first, unless that only introduces the rest
    (Ray Train's "Training failed due to worker errors:"), then its last."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def _exception_of(trial):
    """The trial's latest error as Tune recorded it on this node just before calling us (its copy
    in storage is synced later): the pickled exception, else the text trace, else Tune's reader."""
    import cloudpickle

    pickled, text = getattr(trial, "pickled_error_file", None), getattr(trial, "error_file", None)
    try:
        if pickled and os.path.exists(pickled):
            with open(pickled, "rb") as f:
                return cloudpickle.load(f)
        if text and os.path.exists(text):
            with open(text) as f:
                return RuntimeError(f.read().split("\n", 1)[-1])  # after the "Failure # N" line
    except Exception:  # an unreadable error file: fall back to what Tune itself reads
        pass
    return trial.get_error()


def trial_error(error, *, log: str | None, attempt: int) -> TrialError:
    """A trial's exception as Tune hands it to the driver (a RayTaskError wrapping the trial's own
    exception, or a TuneError): the original type and message; the traceback is in the trial log.
    ``final``: the trial raised ``FinalTrialError`` (not retried); its type and message are the
    original exception's, not the marker's."""
    from trainer.driver.retries import final_marker

    marker = final_marker(error)
    if marker is not None:
        return TrialError(type=marker.type_name, message=marker.message.strip()[:2000], log=log, attempt=attempt,
                          final=True)
    cause = getattr(error, "cause", None)  # RayTaskError.cause: the exception raised in the trial
    original = cause if isinstance(cause, BaseException) else error
    type_name = type(original).__name__ if original is not None else "Error"
    message = str(original if original is not None else "unknown error")
    if type_name.startswith("RayTaskError(") and type_name.endswith(")"):
        type_name = type_name[len("RayTaskError("):-1]
    if not cause and "Traceback" in message:
        # Tune's string form: the traceback of the remote call; its last line is "Type: message".
        lines = [line for line in message.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else message
        type_name, _, text = last.partition(": ")
        message = text or last
        if type_name.split(".")[-1] == "FinalTrialError":  # "FinalTrialError: Type: message"
            type_name, _, message = message.partition(": ")
            return TrialError(type=type_name.split(".")[-1] or "Error", message=message.strip()[:2000], log=log,
                              attempt=attempt, final=True)
    return TrialError(type=type_name.split(".")[-1] or "Error", message=message.strip()[:2000], log=log, attempt=attempt)


def drop_record_copies_from_tune_staging(experiment_name: str) -> list[Path]:
    """On a resume, Tune copies every top-level *.json of the experiment directory (ours too: the
    index, driver.json, cancel.json) into its driver staging directory, then uploads that directory
    back at each snapshot: a stale copy of the index from the previous attempt, written by pyarrow
    in place (not atomically), over the live one. Tune's setup of the callbacks comes after that
    copy and before the first snapshot, so removing the copies here keeps the record this driver's.
    The staging directory is under this driver's own Ray session (ray.init(address="local"))."""
    from ray.train.constants import _get_ray_train_session_dir  # the root Tune stages under

    removed = []
    for staging in Path(_get_ray_train_session_dir()).glob(f"*/{experiment_name}/driver_artifacts"):
        for name in TOP_LEVEL_JSON:
            copy = staging / name
            if copy.is_file():
                copy.unlink()
                removed.append(copy)
    return removed
