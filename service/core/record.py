"""The sweep record: what a sweep is and did, typed, and where each part lives in storage.

This module is the one owner of a sweep's storage layout and of the record's format. Everything
that reads or writes a sweep (the driver, sweepctl, the API, the report, pull) goes through it.

    <storage>/<sweep>/spec.yaml              the resolved spec (after --set): the truth for resume/report
    <storage>/<sweep>/sweep.json             the index: states, best, one line per trial (bounded rate)
    <storage>/<sweep>/driver.json            the driver's state: attempt, heartbeat, how it ended (trainer/driver/lock.py)
    <storage>/<sweep>/driver/attempt-NNNNNN.json  one per driver start, created only if absent: the lock's fencing token
    <storage>/<sweep>/cancel.json            a cancel asked for (the service, `sweepctl cancel`): who, when; the driver records "cancelled"
    <storage>/<sweep>/logs/driver/...        the driver's progress log, in segments (SegmentedLog)
    <storage>/<sweep>/<trial>/trial.json     one trial's record: config, history, checkpoints, error
    <storage>/<sweep>/<trial>/logs/...       the trial's stdout/stderr and traceback, per attempt and rank
    <storage>/<sweep>/<trial>/tensorboard/   the trial's TensorBoard run: per-epoch scalars + hparams (trainer/tensorboard.py)
    <storage>/<sweep>/<trial>/checkpoint_*   Ray Tune's checkpoints (format: service/core/checkpoint.py)
    <storage>/<sweep>/report/                sweepctl report / evaluate output

Writes are incremental: a trial's record is rewritten when that trial changes (one small object),
the index at a rate bounded in bytes per second, logs in segments of bounded size. So what a
result costs the driver does not grow with the number of trials. Each write is atomic (one PUT
on S3, write-then-rename locally): a reader sees the old object or the new one.

Sweeps written before this format (one ``summary.json`` holding everything) are still read.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from service.core import storage
from service.core.errors import UserError

FORMAT = 2  # sweep.json / trial.json; 1 was the single summary.json

SPEC = "spec.yaml"
INDEX = "sweep.json"
LEGACY_SUMMARY = "summary.json"
DRIVER_LOCK = "driver.json"
DRIVER_ATTEMPTS = "driver"
SPACE_RESERVE = ".space-reserve"
CANCEL_REQUEST = "cancel.json"
LEGACY_DRIVER_LOG = "driver.log"
REPORT_DIR = "report"
TRIAL_RECORD = "trial.json"
LOGS = "logs"
# The trial's TensorBoard event files, written by the trial: `tensorboard --logdir <storage>/<sweep>`
# shows one run (and one HParams row) per trial.
TENSORBOARD = "tensorboard"
# The record's objects at the sweep's top level that Tune's restore would take for its own: it
# copies every top-level *.json of the experiment directory into its staging directory and uploads
# that directory back at each snapshot, which would put stale copies over the live ones.
TOP_LEVEL_JSON = (INDEX, LEGACY_SUMMARY, DRIVER_LOCK, CANCEL_REQUEST)

# rejected: refused before it trained, by a constraint the trial checks first (``TrialSummary.infeasible``
# says which); never retried, no epochs.
TrialStatus = Literal["pending", "running", "paused", "terminated", "stopped_early", "error", "rejected"]
TRIAL_STATES: tuple[str, ...] = TrialStatus.__args__
FINISHED_STATES = ("terminated", "stopped_early", "error", "rejected")
# interrupted: SIGINT/SIGTERM or a lost driver (resume continues it); failed: the driver stopped on
# an error (``SweepIndex.stop_reason`` says which); cancelled: through the service.
SweepStatus = Literal["running", "finished", "interrupted", "failed", "cancelled"]


class RecordError(Exception):
    """A record that cannot be read as any known format; the message says which object and why."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Model(BaseModel):
    # Readers ignore fields a newer writer added, so an older sweepctl still reads a newer sweep.
    model_config = ConfigDict(extra="ignore")


# ============================================================================ the models
class EpochResult(_Model):
    """One epoch of one trial, as the training loop reported it (trainer/loop.py)."""

    epoch: int  # 1-based
    attempt: int = 1  # the driver attempt that recorded it (a resumed sweep never counts an epoch twice)
    val_acc: float | None = None  # accuracy on the validation split, 0..1
    val_loss: float | None = None  # mean cross-entropy on the validation split, nats
    val_samples: int | None = None  # images in the validation split (all ranks): val_acc's binomial n
    val_loss_se: float | None = None  # standard error of val_loss: std of the per-image losses / sqrt(n), nats
    train_acc: float | None = None  # accuracy on the (augmented) training batches of this epoch, 0..1
    train_loss: float | None = None  # mean cross-entropy on those batches, nats
    lr: float | None = None  # learning rate for the next epoch
    samples_per_second: float | None = None  # training throughput, all workers together
    epoch_seconds: float | None = None  # wall time of training + validation
    train_samples: int | None = None  # samples trained on this epoch, all workers together
    resumed_from_epoch: int | None = None  # 0: a fresh start; k: continued from epoch k's checkpoint
    duplicate_samples: int | None = None  # N-worker trials: samples two ranks saw (must be 0)
    checkpoint_seconds: float | None = None  # serializing + writing this epoch's checkpoint locally
    checkpoint_bytes: int | None = None  # size of that checkpoint
    grad_scale: float | None = None  # fp16: GradScaler's loss scale after this epoch (halved at each skipped overflow step)
    gpu_peak_bytes: int | None = None  # GPU trials: most bytes the trial held in PyTorch's CUDA allocator so far (its ranks' largest)
    params: int | None = None  # trainable parameters of the model (a frozen backbone's are not counted), parameters
    # Seconds spent in the training phase of epochs 1..epoch, summed (not validation, not checkpoint
    # writes); a restore continues the count of the checkpoint it starts from (a PBT exploit: the donor's).
    train_seconds: float | None = None
    # Milliseconds per image of a forward pass in eval mode under no_grad, in the trial's precision on
    # its device, over one fixed batch of the first 256 validation images (every trial the same batch
    # size): the median of 5 timed passes after 2 warm-up ones. Measured once per trial start (after its
    # first epoch) and carried: it depends on the architecture, not on the weights. Machine- and
    # load-dependent: trials compare only on the same kind of machine under a similar load.
    inference_ms: float | None = None

    def metric(self, name: str) -> float | None:
        value = getattr(self, name, None)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


RESULT_KEYS = tuple(f for f in EpochResult.model_fields if f != "attempt")
# The metrics an objective or a constraint may name: everything the loop reports per epoch.
METRICS: tuple[str, ...] = tuple(f for f in RESULT_KEYS if f != "epoch")
# Which way is better, for the metrics that have a direction (an objective's default mode). The
# others (lr, val_samples, grad_scale, ...) need the mode said.
BETTER: dict[str, Literal["max", "min"]] = {
    "val_acc": "max", "train_acc": "max", "samples_per_second": "max",
    "val_loss": "min", "train_loss": "min", "val_loss_se": "min", "epoch_seconds": "min", "train_seconds": "min",
    "checkpoint_seconds": "min", "checkpoint_bytes": "min", "gpu_peak_bytes": "min", "params": "min",
    "inference_ms": "min", "duplicate_samples": "min",
}
# Known before a trial trains (computable from its spec and the input shape): a constraint on these
# rejects a config before the trial trains (trainer/loop.py ``reject_if_infeasible``).
KNOWN_BEFORE_TRAINING = ("params",)


class Objective(_Model):
    metric: str
    mode: Literal["max", "min"]

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def signed(self, value: float) -> float:
        """``value`` as a number to minimize (smaller is better in either mode)."""
        return -value if self.mode == "max" else value

    def best_epoch(self, history: Iterable[EpochResult]) -> EpochResult | None:
        best = None
        for entry in history:
            value = entry.metric(self.metric)
            if value is not None and (best is None or self.better(value, best.metric(self.metric))):
                best = entry
        return best


_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b, ">": lambda a, b: a > b}


class Constraint(_Model):
    """One of the spec's ``constraints`` (``"params <= 2e6"``), parsed by service/core/spec.py's
    ``parse_constraint``: a trial satisfies it when its ``metric`` compares to ``bound`` by ``op``."""

    metric: str
    op: Literal["<=", "<", ">=", ">"]
    bound: float
    text: str  # as the spec wrote it

    def violation(self, value: float | None) -> str | None:
        """Why ``value`` breaks this constraint, None when it keeps it. A metric the trial never
        reported (None) cannot be shown to keep it: that breaks it too."""
        if value is None:
            return f"{self.metric} was not reported, so '{self.text}' cannot hold"
        if _OPERATORS[self.op](value, self.bound):
            return None
        shown = f"{value:,}" if isinstance(value, int) else f"{value:.4g}"
        return f"{self.metric} = {shown} breaks '{self.text}'"

    @property
    def before_training(self) -> bool:
        return self.metric in KNOWN_BEFORE_TRAINING


def violations(constraints: Iterable[Constraint], entry: EpochResult) -> str | None:
    """Every constraint ``entry`` (one epoch) breaks, in one line; None when it keeps them all."""
    found = [v for c in constraints if (v := c.violation(entry.metric(c.metric))) is not None]
    return "; ".join(found) or None


class Exploit(_Model):
    """PBT: the trial continued from a better trial's checkpoint, with a mutated config."""

    epoch: int  # the donor checkpoint's epoch: the trial's next epoch is epoch + 1
    donor: str  # trial id
    donor_checkpoint: str | None = None  # URI
    restored_weights: str | None = None  # digest of the weights after the restore
    config: dict[str, Any] = {}


class CheckpointRef(_Model):
    """A checkpoint the trial keeps in storage (retention deletes the others)."""

    uri: str
    epoch: int  # the epoch it was saved after
    objective: float | None = None  # that epoch's objective: retention keeps the best


class SkippedCheckpoint(_Model):
    """A checkpoint a restore of the trial found corrupt and passed over (trainer/loop.py
    ``restore_checkpoint``): it no longer counts among the trial's checkpoints. Left in storage."""

    uri: str
    reason: str  # e.g. "checksum mismatch for state.pt in checkpoint_000003: ..."
    attempt: int = 1  # the driver attempt whose restore found it
    resumed_from_epoch: int = 0  # what the trial continued from instead: that epoch's checkpoint; 0: a fresh start


class TrialError(_Model):
    """Why a trial failed for good: the exception raised in the trial, and where its log is."""

    type: str  # exception class, e.g. "ValueError"
    message: str  # its message (first 2,000 characters)
    log: str | None = None  # URI of the trial's log directory: the full traceback is there
    attempt: int | None = None  # the trial attempt (1 + restarts) that failed
    final: bool = False  # not retried: no restart can fix it (missing file, bad format, ...: trainer/trainable.py)


class TrialSummary(_Model):
    """The part of a trial the index keeps: enough for a table, no history."""

    trial_id: str
    status: TrialStatus = "pending"
    # searched and mutated values, by dotted spec path; a conditional section's: what the trial's
    # branch set, its name always (service/core/spec.py, conditional_sections)
    config: dict[str, Any] = {}
    stop_reason: str | None = None
    epochs: int = 0  # the last epoch reported
    seconds: float = 0.0  # the trial's own training time (Tune's time_total_s)
    best: EpochResult | None = None  # the epoch with the best objective
    checkpoint: str | None = None  # URI of the trial's best retained checkpoint (latest while running)
    restarts: int = 0  # crashes restarted from the last checkpoint
    error: TrialError | None = None
    # Why the trial breaks the spec's constraints (the values and the constraint): never ranked, never
    # the sweep's best. A "rejected" trial was refused before training; any other was judged on its
    # scored epoch (``best``: no epoch kept every constraint).
    infeasible: str | None = None
    # A warm start's copy of an earlier sweep's trial (grid/random skip a configuration evaluated
    # there): "<that sweep's URI>#<its trial id>". Its results, checkpoints and log are that trial's.
    copied_from: str | None = None


class TrialRecord(TrialSummary):
    """Everything about one trial: <sweep>/<trial>/trial.json."""

    format: int = FORMAT
    history: list[EpochResult] = []  # one entry per epoch, the latest attempt's where epochs were re-run
    exploits: list[Exploit] = []  # PBT
    checkpoints: list[CheckpointRef] = []  # the checkpoints kept in storage, oldest first
    skipped_checkpoints: list[SkippedCheckpoint] = []  # found corrupt at a restore, each once
    val_split: str | None = None  # fingerprint of the validation indices (equal across the sweep's trials)
    log: str | None = None  # URI of the trial's log directory
    started_at: str | None = None
    updated_at: str | None = None

    def summary(self) -> TrialSummary:
        return TrialSummary.model_validate(self.model_dump(include=set(TrialSummary.model_fields)))


class SweepIndex(_Model):
    """<sweep>/sweep.json: the sweep at a glance, one line per trial.

    A multi-objective sweep (the spec's ``objectives``) lists them in ``objectives``, the first also
    as ``objective`` (what schedulers, retention and one-number views go by); each trial is scored
    at its last epoch (what Optuna is told when the trial completes), ``pareto_front`` holds the
    trials no other finished trial dominates, and ``best_trial`` is the front's best by the first
    objective (ties: by the next objectives, then the trial id)."""

    format: int = FORMAT
    sweep: str
    status: SweepStatus = "running"
    objective: Objective
    objectives: list[Objective] = []  # multi-objective sweeps: all of them, objective first; else empty
    constraints: list[Constraint] = []
    # Multi-objective sweeps: the ids of the finished (terminated or stopped early), feasible trials
    # that no other such trial dominates (at least as good in every objective, better in one), in
    # ranking order. Trials with equal objective values do not dominate each other: all stay on it.
    pareto_front: list[str] = []
    max_epochs: int  # the epoch budget of one trial
    num_trials: int  # planned: grid points × num_samples
    trial_states: dict[str, int] = {}
    started_at: str
    updated_at: str
    driver_attempt: int = 1
    wall_seconds: float = 0.0  # all driver attempts together
    stopped_at: str | None = None  # when the last driver attempt ended (any status but running)
    stop_reason: str | None = None  # why it ended, when not finished: the signal, the error
    best_trial: str | None = None
    trials: list[TrialSummary] = []

    def ranked(self, trials: Iterable[TrialSummary] | None = None) -> list:
        """``trials`` (default: the index's own) by this sweep's ranking (``ranked``)."""
        return ranked(self.trials if trials is None else trials, self.objective, self.objectives[1:])

    def scored_epoch(self, history: list[EpochResult]) -> EpochResult | None:
        """The epoch a trial is judged by (its ``best``): one objective: the best epoch among those
        that keep every constraint (the best of all when none does); several: the last epoch (what
        the searcher saw)."""
        if self.objectives:
            return history[-1] if history else None
        kept = [h for h in history if violations(self.constraints, h) is None] if self.constraints else history
        return self.objective.best_epoch(kept) or self.objective.best_epoch(history)

    def infeasibility(self, trial: TrialSummary) -> str | None:
        """Why ``trial``'s scored epoch breaks the constraints (None: it keeps them, or has none yet)."""
        return violations(self.constraints, trial.best) if self.constraints and trial.best else None

    @property
    def best(self) -> TrialSummary | None:
        return self.trial(self.best_trial) if self.best_trial else None

    def trial(self, trial_id: str) -> TrialSummary | None:
        return next((t for t in self.trials if t.trial_id == trial_id), None)


def ranked(trials: Iterable[TrialSummary], objective: Objective, then: Iterable[Objective] = ()) -> list:
    """Feasible trials with a scored epoch, best first by ``objective``; ties by the objectives in
    ``then`` (a multi-objective sweep's others, in order), then the earlier trial id first. The one
    ranking. Infeasible trials (``TrialSummary.infeasible``) are never ranked."""
    order = [objective, *then]
    keyed = [(key, t) for t in trials if (key := rank_key(t, order)) is not None]
    return [t for _, t in sorted(keyed, key=lambda pair: pair[0])]


def rank_key(trial: TrialSummary, objectives: list[Objective]) -> tuple | None:
    """``ranked``'s sort key (smaller is better), None for a trial it leaves out (infeasible, or
    without a value for every objective at its scored epoch)."""
    if trial.infeasible is not None or trial.best is None:
        return None
    values = [trial.best.metric(o.metric) for o in objectives]
    if any(v is None for v in values):
        return None
    return (*(o.signed(v) for o, v in zip(objectives, values)), trial.trial_id)


def dominates(a: tuple, b: tuple) -> bool:
    """``a`` dominates ``b`` (both: values to minimize): no worse in any, better in at least one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(trials: Iterable[TrialSummary], objectives: list[Objective]) -> list[str]:
    """The ids of the finished (terminated or stopped early), feasible trials that no other such
    trial dominates at their scored epoch, in ranking order. Equal values dominate neither way, so
    duplicates all stay on the front. O(trials × front): in ranking order a trial can only be
    dominated by one before it, and if by any, then by one already on the front."""
    front: list[tuple] = []
    for key, trial_id in sorted((key, t.trial_id) for t in trials if t.status in ("terminated", "stopped_early")
                                and (key := rank_key(t, objectives)) is not None):
        values = key[:-1]
        if not any(dominates(kept[:-1], values) for kept in front):
            front.append(key)
    return [key[-1] for key in front]


# ============================================================================ queries
SORT_KEYS = {"epochs": lambda t: -t.epochs, "seconds": lambda t: -t.seconds, "trial": lambda t: t.trial_id}


def sort_trials(trials: list[TrialSummary], objective: Objective, key: str,
                then: Iterable[Objective] = ()) -> list[TrialSummary]:
    """Trials sorted for a table: by the objective (``then``: a multi-objective sweep's others, for
    ties) or a metric with a direction (best first; unscored and infeasible last), or by
    epochs/seconds (most first) or trial id. One rule for CLI and API."""
    if key in SORT_KEYS:
        return sorted(trials, key=SORT_KEYS[key])
    if key == "objective":
        scored = ranked(trials, objective, then)
    elif key in BETTER:
        scored = ranked(trials, Objective(metric=key, mode=BETTER[key]))
    else:
        raise UserError(f"cannot sort by {key!r}: use objective, a metric ({', '.join(BETTER)}), "
                        f"epochs, seconds or trial")
    placed = {t.trial_id for t in scored}
    return scored + [t for t in trials if t.trial_id not in placed]


def trials_body(index: SweepIndex, *, sort: str = "objective", status: str | None = None) -> dict:
    """What `sweepctl trials --json` prints and GET /sweeps/{name}/trials answers."""
    trials = sort_trials([t for t in index.trials if status is None or t.status == status], index.objective, sort,
                         index.objectives[1:])
    body = {"sweep": index.sweep, "status": index.status, "objective": index.objective.model_dump(),
            "updated_at": index.updated_at, "total": len(trials),
            "trials": [t.model_dump(mode="json") for t in trials]}
    if index.objectives:
        body.update(objectives=[o.model_dump() for o in index.objectives], pareto_front=list(index.pareto_front))
    return body


# ============================================================================ cancel
class CancelRequest(_Model):
    """<sweep>/cancel.json: a cancel asked for (through the service, or `sweepctl cancel`), written
    before the driver is stopped; the driver then records the sweep as cancelled, not interrupted,
    with who and when. A resume withdraws it."""

    requested_at: str  # ISO 8601, UTC
    by: str  # who asked: "alice via the sweep service", "bob@laptop"
    # The sweep's submitter, kept here because a backend may forget it (a cancel deletes its RayJob).
    owner: str | None = None


def unstarted_cancel_index(index: SweepIndex, *, created: str, cancel: CancelRequest) -> SweepIndex:
    """``index`` (``new_index``'s, with attempt 0: no driver ran) as the record of a sweep cancelled
    before its driver started (still pending): no trial, ``cancelled`` with who and when."""
    index = index.model_copy(deep=True)
    index.started_at = created or index.started_at
    index.status, index.stopped_at = "cancelled", cancel.requested_at
    index.stop_reason = f"cancelled by {cancel.by} at {cancel.requested_at}, before its driver started"
    return index


# ============================================================================ the layout
class SweepStore:
    """One sweep's place in storage: the URIs of its parts, and their readers."""

    def __init__(self, storage_uri: str, name: str):
        self.storage_uri = storage.normalize(storage_uri)
        self.name = name
        self.uri = storage.join(self.storage_uri, name)

    def path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    @property
    def spec_uri(self) -> str:
        return self.path(SPEC)

    @property
    def index_uri(self) -> str:
        return self.path(INDEX)

    @property
    def lock_uri(self) -> str:
        return self.path(DRIVER_LOCK)

    @property
    def cancel_request_uri(self) -> str:
        return self.path(CANCEL_REQUEST)

    def request_cancel(self, by: str, owner: str | None = None) -> CancelRequest:
        """A cancel, written before the driver is stopped (SIGTERM, or its RayJob deleted): the
        driver then records the sweep as cancelled by ``by``, not interrupted. A resume withdraws it."""
        request = CancelRequest(requested_at=now_iso(), by=by, owner=owner)
        storage.write_json_atomic(self.cancel_request_uri, request.model_dump(mode="json"))
        return request

    def read_cancel_request(self) -> CancelRequest | None:
        raw = storage.read_json_if_exists(self.cancel_request_uri)
        return None if raw is None else _parse(CancelRequest, raw, self.cancel_request_uri)

    def mark_cancelled(self, by: str) -> None:
        """For a sweep whose driver is already gone (it cannot record the cancel itself)."""
        index = self.read_index()
        if index is not None and index.status in ("running", "interrupted", "failed"):
            index.status, index.stopped_at = "cancelled", now_iso()
            index.stop_reason = f"cancelled by {by} at {index.stopped_at} (its driver had already stopped)"
            storage.write_text_atomic(self.index_uri, index.model_dump_json())

    def keep_unstarted(self, spec_yaml: str, index: SweepIndex) -> None:
        """A sweep cancelled before its driver wrote anything: its resolved spec and ``index``
        (``unstarted_cancel_index``), each created only if absent (a driver that did start keeps its
        own), so that it stays listed, and resumable, once its backend forgot it (a deleted RayJob)."""
        storage.create_exclusive(self.spec_uri, spec_yaml.encode())
        storage.create_exclusive(self.index_uri, index.model_dump_json().encode())

    @property
    def prefix(self) -> str:
        """The sweep's prefix, its separator included: every object under it, and only those, is the sweep's."""
        return self.uri + ("/" if storage.is_s3(self.uri) else os.sep)

    def stored_objects(self) -> dict[str, int]:
        """Every object under the sweep's prefix, by relative path, with its size in bytes."""
        return storage.file_sizes(self.uri)

    def delete(self) -> None:
        """Remove every object under ``<storage>/<name>/`` and nothing else: the prefix ends with
        the separator, so sweep ``abc`` never takes ``abc-2``'s objects with it."""
        storage.delete_tree(self.uri)

    @property
    def space_reserve_uri(self) -> str:
        return self.path(SPACE_RESERVE)

    def attempt_claim_uri(self, attempt: int) -> str:
        return self.path(DRIVER_ATTEMPTS, f"attempt-{attempt:06d}.json")

    @property
    def attempt_claims_uri(self) -> str:
        return self.path(DRIVER_ATTEMPTS)

    @property
    def report_uri(self) -> str:
        return self.path(REPORT_DIR)

    def driver_log_uri(self) -> str:
        return self.path(LOGS, "driver")

    def trial_record_uri(self, trial_id: str) -> str:
        return self.path(_safe_id(trial_id), TRIAL_RECORD)

    def trial_log_uri(self, trial_id: str) -> str:
        return self.path(_safe_id(trial_id), LOGS)

    def tensorboard_uri(self, trial_id: str) -> str:
        """The trial's TensorBoard run: its event files, one (or a few) per trial attempt."""
        return self.path(_safe_id(trial_id), TENSORBOARD)

    def checkpoint_uri(self, path: str) -> str:
        """Ray reports checkpoint paths inside its storage filesystem ("bucket/prefix/..." on S3)."""
        if storage.is_s3(self.storage_uri) and not path.startswith("s3://"):
            return "s3://" + path
        return path

    # ---------------------------------------------------------------------- readers
    def exists(self) -> bool:
        return storage.exists(self.uri)

    def read_spec_text(self) -> str:
        return storage.read_text(self.spec_uri)

    def read_index(self) -> SweepIndex | None:
        """The index, or None when the sweep has none yet. A sweep of the old format (summary.json)
        is read as one; an unreadable object is a RecordError naming it."""
        raw = storage.read_json_if_exists(self.index_uri)
        if raw is not None:
            return _parse(SweepIndex, raw, self.index_uri)
        legacy = storage.read_json_if_exists(self.path(LEGACY_SUMMARY))
        if legacy is None:
            return None
        return _parse(SweepIndex, _legacy_index(legacy), self.path(LEGACY_SUMMARY))

    def read_trial(self, trial_id: str) -> TrialRecord | None:
        record = self._read_trial_record(trial_id)
        if record is not None:
            return record
        legacy = storage.read_json_if_exists(self.path(LEGACY_SUMMARY))
        for trial in (legacy or {}).get("trials", []):
            if trial.get("trial_id") == trial_id:
                return _parse(TrialRecord, _legacy_trial(trial), self.path(LEGACY_SUMMARY))
        return None

    def _read_trial_record(self, trial_id: str) -> TrialRecord | None:
        raw = storage.read_json_if_exists(self.trial_record_uri(trial_id))
        return None if raw is None else _parse(TrialRecord, raw, self.trial_record_uri(trial_id))

    def read_trials(self, index: SweepIndex | None = None) -> list[TrialRecord]:
        """Every trial's full record, in the index's order (one read per trial)."""
        index = index or self.read_index()
        if index is None:
            return []
        if not storage.exists(self.index_uri):  # old format: everything is in summary.json
            legacy = storage.read_json(self.path(LEGACY_SUMMARY))
            return [_parse(TrialRecord, _legacy_trial(t), self.path(LEGACY_SUMMARY)) for t in legacy["trials"]]
        records = []
        for line in index.trials:
            record = self._read_trial_record(line.trial_id)
            # A trial the index lists but whose record is missing (storage outage at its write):
            # the index line is what there is.
            records.append(record or TrialRecord.model_validate(line.model_dump()))
        return records

    def read_driver_log(self) -> str:
        text = read_segmented_log(self.driver_log_uri(), header=lambda attempt, _: f"--- driver attempt {attempt}\n")
        if text:
            return text
        try:
            return storage.read_text(self.path(LEGACY_DRIVER_LOG))
        except FileNotFoundError:
            return ""

    def read_trial_log(self, trial_id: str) -> str | None:
        """The trial's log, every attempt in order, each under a header; None when it has none."""
        uri = self.trial_log_uri(trial_id)
        text = read_segmented_log(uri, header=lambda attempt, stream: f"===== trial {trial_id}: attempt {attempt}"
                                                                      f"{'' if stream == 'trial' else ', ' + stream} =====\n")
        return text or None


def list_sweeps(storage_uri: str) -> list[str]:
    """Names of the sweeps stored under ``storage_uri``: the directories holding an index (or an
    old-format summary), one listing plus one existence check per directory."""
    names = []
    for name in storage.list_dirs(storage_uri):
        if not name.startswith(".") and _ID.match(name):
            store = SweepStore(storage_uri, name)
            if storage.file_exists(store.index_uri) or storage.file_exists(store.path(LEGACY_SUMMARY)):
                names.append(name)
    return names


_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _safe_id(trial_id: str) -> str:
    """Trial ids become path parts: nothing that could leave the sweep's directory."""
    if not _ID.match(trial_id) or trial_id in (".", ".."):
        raise RecordError(f"not a trial id: {trial_id!r}")
    return trial_id


def _parse(model, raw, uri: str):
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecordError(f"{uri} is not a sweep record this sweepctl can read ({where}: {first['msg']}); "
                          f"it may come from another version of sweep-service") from None


def _legacy_trial(trial: dict) -> dict:
    """A format-1 summary.json trial → a TrialRecord's fields (the names were kept)."""
    return {**trial, "format": FORMAT}


def _legacy_index(summary: dict) -> dict:
    return {**summary, "trials": [_legacy_trial(t) for t in summary.get("trials", [])]}


# ============================================================================ segmented logs
SEGMENT_BYTES = 64 * 1024  # one object; a full one is sealed and never rewritten
# <attempt>-<stream>-<segment>.log; stream: "trial" (the trainable's own process) or "rank<N>" (a
# worker of an N-worker trial), "driver" for the driver's log.
_SEGMENT = re.compile(r"^(\d+)-([a-z]+\d*)-(\d+)\.log$")


class SegmentedLog:
    """An append-only text log in storage, as a series of objects of at most SEGMENT_BYTES.

    S3 has no append: the current segment is rewritten (at most every ``interval`` seconds, when
    it changed) until it is full, then sealed. So bytes written per second are bounded by
    SEGMENT_BYTES / interval whatever the log's length. Past ``cap_bytes`` per attempt the log
    keeps only the last ``tail_bytes`` (the end of a run, where a traceback is) and a marker saying
    how much was dropped."""

    def __init__(self, directory_uri: str, attempt: int, stream: str = "trial", *, interval: float = 2.0,
                 cap_bytes: int = 8 << 20, tail_bytes: int = 64 << 10, clock: Callable[[], float] = time.monotonic,
                 flush_on_write: bool = True):
        """``flush_on_write``: ``write`` also writes to storage when ``interval`` has passed (and a
        segment is full). False: only ``flush``/``close`` do, which a tee of stdout/stderr needs
        (trainer/trial_log.py): ``write`` is then called from inside logging handlers, holding
        their locks, and must never wait on storage."""
        self.directory_uri, self.attempt, self.stream = directory_uri, attempt, stream
        self.interval, self.cap_bytes, self.tail_bytes, self.clock = interval, cap_bytes, tail_bytes, clock
        self.flush_on_write = flush_on_write
        self._segment = 0
        self._current = ""  # text of the current segment
        self._sealed: list[tuple[str, str]] = []  # full segments not written yet: (name, text)
        self._kept = 0  # bytes kept in sealed + current segments
        self._tail = ""  # past the cap: the last tail_bytes, written at close
        self._dropped = 0
        self._dirty = False
        self._last_flush = -math.inf
        # Two locks, so that no storage I/O ever happens under the one ``write`` takes: a write to
        # storage may itself log (botocore does), and a thread logging takes its handler's lock,
        # then ``write``'s: I/O under that lock deadlocked a DDP trial's rank 0 on S3.
        self._lock = threading.Lock()  # the text; held only for memory operations
        self._io = threading.Lock()  # one writer to storage at a time, in order; taken before _lock

    def write(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._kept + len(text) > self.cap_bytes:
                room = max(0, self.cap_bytes - self._kept)
                self._append(text[:room])
                overflow = self._tail + text[room:]
                self._dropped += max(0, len(overflow) - self.tail_bytes)
                self._tail = overflow[-self.tail_bytes:]
            else:
                self._append(text)
        if self.flush_on_write:
            self.flush(force=False)

    def _append(self, text: str) -> None:
        while text:
            room = SEGMENT_BYTES - len(self._current)
            self._current += text[:room]
            self._kept += len(text[:room])
            text = text[room:]
            self._dirty = True
            if len(self._current) >= SEGMENT_BYTES:
                self._sealed.append((self._name(), self._current))  # written once more, complete
                self._segment += 1
                self._current = ""
                self._dirty = False

    def _name(self) -> str:
        return f"{self.attempt:03d}-{self.stream}-{self._segment:04d}.log"

    def flush(self, force: bool = True) -> None:
        """Write the full segments not written yet, and the current one if it changed (and, unless
        ``force``, if ``interval`` passed). What a failed write did not write stays to be written."""
        with self._io:
            with self._lock:
                due = self._dirty and (force or self.clock() - self._last_flush >= self.interval)
                writes, self._sealed = self._sealed, []
                current = (self._name(), self._current) if due else None
                if current is not None:
                    writes.append(current)
                    self._dirty = False
                    self._last_flush = self.clock()
            for k, (name, text) in enumerate(writes):
                try:
                    storage.write_text_atomic(storage.join(self.directory_uri, name), text)
                except BaseException:
                    with self._lock:
                        self._sealed = [w for w in writes[k:] if w is not current] + self._sealed
                        if current in writes[k:]:
                            self._dirty = True
                    raise

    def close(self) -> None:
        """Flush, with the kept tail and the truncation marker if the cap was reached."""
        with self._lock:
            if self._tail or self._dropped:
                marker = (f"\n[... {self._dropped} characters dropped: a log keeps the first {self.cap_bytes} "
                          f"characters of each attempt and its last {self.tail_bytes} ...]\n")
                self._kept -= len(marker) + len(self._tail)  # past the cap on purpose: the end must land
                self.cap_bytes = math.inf
                tail, self._tail, self._dropped = self._tail, "", 0
                self._append(marker + tail)
        self.flush(force=True)


def next_log_attempt(directory_uri: str, stream: str = "trial") -> int:
    """1 + the highest attempt already logged in ``directory_uri`` for ``stream``."""
    attempts = [int(m.group(1)) for m in map(_SEGMENT.match, _list_names(directory_uri)) if m and m.group(2) == stream]
    return max(attempts, default=0) + 1


def read_segmented_log(directory_uri: str, header: Callable[[int, str], str]) -> str:
    """Every segment in order (attempt; the trial's own stream before its ranks; segment), a
    header before each attempt and stream."""
    keyed = sorted(((int(m.group(1)), m.group(2) != "trial", m.group(2), int(m.group(3))), name)
                   for name in _list_names(directory_uri) if (m := _SEGMENT.match(name)))
    parts, current = [], None
    for (attempt, _, stream, _segment), name in keyed:
        if (attempt, stream) != current:
            current = (attempt, stream)
            parts.append(header(attempt, stream))
        parts.append(storage.read_text(storage.join(directory_uri, name)))
    return "".join(parts)


def _list_names(directory_uri: str) -> list[str]:
    try:
        return [n for n in storage.list_files(directory_uri) if "/" not in n]
    except FileNotFoundError:
        return []


# ============================================================================ the writer
class RecordWriter:
    """The driver's side of the record: holds every trial's record in memory, writes a trial's
    record when that trial changes and the index at a bounded rate.

    Index writes are at least ``index_interval`` seconds apart and, as the index grows, further
    apart, so that they stay under ``index_bytes_per_second``: the bytes written per second are
    bounded whatever the number of trials. ``fenced()`` says the sweep belongs to another driver
    attempt now: then nothing is written."""

    def __init__(self, store: SweepStore, index: SweepIndex, trials: Iterable[TrialRecord] = (), *,
                 index_interval: float = 2.0, index_bytes_per_second: float = 64 * 1024,
                 clock: Callable[[], float] = time.monotonic, fenced: Callable[[], bool] = lambda: False,
                 warn: Callable[[str], None] = lambda message: None):
        self.store, self.index = store, index
        self.trials: dict[str, TrialRecord] = {t.trial_id: t for t in trials}
        self.index_interval, self.index_bytes_per_second = index_interval, index_bytes_per_second
        self.clock, self.fenced, self.warn = clock, fenced, warn
        self._states = dict.fromkeys(TRIAL_STATES, 0)
        for t in self.trials.values():
            self._states[t.status] += 1
        self._ranking = [index.objective, *index.objectives[1:]]  # ranked()'s order: the objective, then the others
        self._best: TrialRecord | None = None
        self._best_key: tuple | None = None
        for t in self.trials.values():
            self._consider_best(t)
        self._front_stale = bool(index.objectives)  # multi-objective: recompute the front at the next snapshot
        self._last_index = -math.inf
        self._index_bytes = 0
        self.index_writes = 0  # index objects written (counted by tests and bench/sweep_scale.py)
        self._unwritten: set[str] = set()  # trials whose last write failed (storage outage)
        self.full: storage.StorageFull | None = None  # a write found the storage full: the driver stops

    # ---------------------------------------------------------------------- state
    def trial(self, trial_id: str, config: dict | None = None) -> TrialRecord:
        record = self.trials.get(trial_id)
        if record is None:
            record = self.trials[trial_id] = TrialRecord(
                trial_id=trial_id, config=config or {}, log=self.store.trial_log_uri(trial_id))
            self._states["pending"] += 1
        return record

    def set_status(self, record: TrialRecord, status: str) -> None:
        if record.status != status:
            self._states[record.status] -= 1
            self._states[status] += 1
            record.status = status
            self._front_stale = bool(self.index.objectives)  # the front holds finished trials only

    def add_result(self, record: TrialRecord, entry: EpochResult) -> None:
        # A re-run epoch (after a crash or a PBT exploit) replaces what came after its checkpoint.
        if record.history and record.history[-1].epoch >= entry.epoch:
            record.history = [h for h in record.history if h.epoch < entry.epoch]
        record.history.append(entry)
        record.epochs = entry.epoch
        record.best = self.index.scored_epoch(record.history)
        if record.status != "rejected":  # a rejection says why; no result can change it
            record.infeasible = self.index.infeasibility(record)
        if record.status in FINISHED_STATES:  # the front holds finished trials: a running one cannot change it
            self._front_stale = bool(self.index.objectives)
        self._consider_best(record)

    def rescore(self, record: TrialRecord) -> None:
        """Judge a record made elsewhere (a warm start's copy of an earlier sweep's trial) by this
        sweep's objectives and constraints."""
        record.best = self.index.scored_epoch(record.history)
        if record.status != "rejected":
            record.infeasible = self.index.infeasibility(record)
        self._front_stale = bool(self.index.objectives)
        self._consider_best(record)

    def reject(self, record: TrialRecord, reason: str) -> None:
        """The trial was refused before it trained: it broke a constraint known before training."""
        record.infeasible = reason
        record.stop_reason = f"rejected before training: {reason}"[:300]
        self.set_status(record, "rejected")
        self._consider_best(record)

    def _consider_best(self, record: TrialRecord) -> None:
        """Keep the sweep's best trial (``ranked``'s first) current in O(1) per result."""
        key = rank_key(record, self._ranking)
        if self._best is record and (key is None or key > self._best_key):
            # The best trial lost its best epoch (a re-run after a PBT exploit replaced it) or broke
            # a constraint: rare, so look at every trial again rather than claim a best that is gone.
            self._best, self._best_key = None, None
            for t in self.trials.values():
                if t is not record:
                    self._consider_best(t)
        if key is None:
            return
        if self._best is None or key < self._best_key:
            self._best, self._best_key = record, key
        elif self._best is record:
            self._best_key = key

    # ---------------------------------------------------------------------- writes
    def changed(self, record: TrialRecord) -> None:
        """Write this trial's record (one object, whatever the number of trials)."""
        record.updated_at = now_iso()
        self._write_trial(record)

    def _write_trial(self, record: TrialRecord) -> bool:
        if self.fenced():
            return False
        try:
            storage.write_text_atomic(self.store.trial_record_uri(record.trial_id), record.model_dump_json())
        except storage.StorageError as err:
            self._unwritten.add(record.trial_id)
            if isinstance(err, storage.StorageFull):
                self._storage_full(err)
                return False
            self.warn(f"could not write trial {record.trial_id}'s record ({err}); retrying at the next index write")
            return False
        self._unwritten.discard(record.trial_id)
        return True

    def snapshot(self, status: str = "running", wall_seconds: float | None = None,
                 stop_reason: str | None = None) -> SweepIndex:
        index = self.index
        index.status = status
        index.updated_at = now_iso()
        index.stopped_at = None if status == "running" else index.updated_at
        index.stop_reason = None if status in ("running", "finished") else stop_reason
        index.trial_states = {s: n for s, n in self._states.items() if n}
        if index.objectives:
            # O(trials × front), only when a trial ended or a finished trial changed since the last snapshot
            if self._front_stale:
                index.pareto_front = pareto_front(self.trials.values(), index.objectives)
                self._front_stale = False
            index.best_trial = index.pareto_front[0] if index.pareto_front else None  # the front is in ranking order
        else:
            index.best_trial = self._best.trial_id if self._best else None
        if wall_seconds is not None:
            index.wall_seconds = round(wall_seconds, 2)
        index.trials = [t.summary() for t in self.trials.values()]
        return index

    # ---------------------------------------------------------------------- a full disk
    RESERVE_BYTES = 256 * 1024

    def reserve_space(self) -> None:
        """Local storage: hold back a little space, so that when trials fill the disk the record
        can still say so (S3 has no disk to fill)."""
        if not storage.is_s3(self.store.uri):
            try:
                storage.write_bytes_atomic(self.store.space_reserve_uri, b"\0" * self.RESERVE_BYTES)
            except storage.StorageError:
                pass  # already full: the first write will say so

    def _storage_full(self, err: storage.StorageFull) -> None:
        """Remember it (the driver stops the sweep: ``full``) and free the reserve for the writes
        that record what happened."""
        if self.full is None:
            self.full = err
            if not storage.is_s3(self.store.uri):
                storage.local_path(self.store.space_reserve_uri).unlink(missing_ok=True)

    def release_reserve(self) -> None:
        if not storage.is_s3(self.store.uri):
            storage.local_path(self.store.space_reserve_uri).unlink(missing_ok=True)

    def maybe_write_index(self, wall_seconds: float) -> bool:
        """Write the index if enough time passed since the last write (see the class docstring)."""
        interval = max(self.index_interval, self._index_bytes / self.index_bytes_per_second)
        if self.clock() - self._last_index < interval:
            return False
        return self.write_index("running", wall_seconds)

    def write_index(self, status: str, wall_seconds: float, stop_reason: str | None = None) -> bool:
        if self.fenced():
            return False
        for trial_id in list(self._unwritten):  # records a storage outage kept from landing
            self._write_trial(self.trials[trial_id])
        text = self.snapshot(status, wall_seconds, stop_reason).model_dump_json()
        self._last_index = self.clock()
        try:
            storage.write_text_atomic(self.store.index_uri, text)
        except storage.StorageError as err:
            if isinstance(err, storage.StorageFull) and self.full is None:
                self._storage_full(err)
                return self.write_index(status, wall_seconds, stop_reason)  # into the freed reserve
            self.warn(f"could not write the sweep index ({err}); retrying at the next update")
            return False
        self._index_bytes = len(text)
        self.index_writes += 1
        return True


def new_index(name: str, objective: Objective, *, max_epochs: int, num_trials: int, attempt: int,
              objectives: list[Objective] = (), constraints: list[Constraint] = ()) -> SweepIndex:
    """``objectives``: a multi-objective sweep's, ``objective`` their first."""
    if objectives and objectives[0] != objective:
        raise ValueError(f"objective {objective} must be the first of objectives {objectives}")
    started = now_iso()
    return SweepIndex(sweep=name, objective=objective, max_epochs=max_epochs, num_trials=num_trials,
                      started_at=started, updated_at=started, driver_attempt=attempt,
                      objectives=list(objectives), constraints=list(constraints))
