"""The sweep record: what a sweep is and did, typed, and where each part lives in storage.

This module is the one owner of a sweep's storage layout and of the record's format. Everything
that reads or writes a sweep (the driver, sweepctl, the API, the report, pull) goes through it.

    <storage>/<sweep>/spec.yaml              the resolved spec (after --set): the truth for resume/report
    <storage>/<sweep>/sweep.json             the index: states, best, one line per trial (bounded rate)
    <storage>/<sweep>/driver.json            the driver's state: attempt, heartbeat, how it ended (trainer/driver/lock.py)
    <storage>/<sweep>/driver/attempt-NNNNNN.json  one per driver start, created only if absent: the lock's fencing token
    <storage>/<sweep>/cancel.json            a cancel through the service: the driver records "cancelled"
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

TrialStatus = Literal["pending", "running", "paused", "terminated", "stopped_early", "error"]
TRIAL_STATES: tuple[str, ...] = TrialStatus.__args__
FINISHED_STATES = ("terminated", "stopped_early", "error")
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

    def metric(self, name: str) -> float | None:
        value = getattr(self, name, None)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


RESULT_KEYS = tuple(f for f in EpochResult.model_fields if f != "attempt")


class Objective(_Model):
    metric: str
    mode: Literal["max", "min"]

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def best_epoch(self, history: Iterable[EpochResult]) -> EpochResult | None:
        best = None
        for entry in history:
            value = entry.metric(self.metric)
            if value is not None and (best is None or self.better(value, best.metric(self.metric))):
                best = entry
        return best


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
    config: dict[str, Any] = {}  # searched and mutated values, by dotted spec path
    stop_reason: str | None = None
    epochs: int = 0  # the last epoch reported
    seconds: float = 0.0  # the trial's own training time (Tune's time_total_s)
    best: EpochResult | None = None  # the epoch with the best objective
    checkpoint: str | None = None  # URI of the trial's best retained checkpoint (latest while running)
    restarts: int = 0  # crashes restarted from the last checkpoint
    error: TrialError | None = None


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
    """<sweep>/sweep.json: the sweep at a glance, one line per trial."""

    format: int = FORMAT
    sweep: str
    status: SweepStatus = "running"
    objective: Objective
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

    def ranked(self) -> list[TrialSummary]:
        return ranked(self.trials, self.objective)

    @property
    def best(self) -> TrialSummary | None:
        return self.trial(self.best_trial) if self.best_trial else None

    def trial(self, trial_id: str) -> TrialSummary | None:
        return next((t for t in self.trials if t.trial_id == trial_id), None)


def ranked(trials: Iterable[TrialSummary], objective: Objective) -> list:
    """Trials with a scored epoch, best first (ties: the earlier trial id first). The one ranking."""
    scored = [t for t in trials if t.best is not None and t.best.metric(objective.metric) is not None]
    sign = -1 if objective.mode == "max" else 1
    return sorted(scored, key=lambda t: (sign * t.best.metric(objective.metric), t.trial_id))


# ============================================================================ queries
SORT_KEYS = {"epochs": lambda t: -t.epochs, "seconds": lambda t: -t.seconds, "trial": lambda t: t.trial_id}


def sort_trials(trials: list[TrialSummary], objective: Objective, key: str) -> list[TrialSummary]:
    """Trials sorted for a table: by the objective or a metric (best first, unscored last), or by
    epochs/seconds (most first) or trial id. One rule for CLI and API."""
    if key in SORT_KEYS:
        return sorted(trials, key=SORT_KEYS[key])
    metric = objective.metric if key == "objective" else key
    if metric not in ("val_acc", "val_loss", "train_acc", "train_loss"):
        raise UserError(f"cannot sort by {key!r}: use objective, val_acc, val_loss, train_acc, train_loss, "
                        f"epochs, seconds or trial")
    scored = ranked(trials, Objective(metric=metric, mode="min" if metric.endswith("loss") else "max"))
    placed = {t.trial_id for t in scored}
    return scored + [t for t in trials if t.trial_id not in placed]


def trials_body(index: SweepIndex, *, sort: str = "objective", status: str | None = None) -> dict:
    """What `sweepctl trials --json` prints and GET /sweeps/{name}/trials answers."""
    trials = sort_trials([t for t in index.trials if status is None or t.status == status], index.objective, sort)
    return {"sweep": index.sweep, "status": index.status, "objective": index.objective.model_dump(),
            "updated_at": index.updated_at, "total": len(trials),
            "trials": [t.model_dump(mode="json") for t in trials]}


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

    def request_cancel(self, by: str) -> None:
        """The service's cancel, written before it stops the driver (SIGTERM, or the RayJob
        deleted): the driver then records the sweep as cancelled, not interrupted. A resume
        withdraws it."""
        storage.write_json_atomic(self.cancel_request_uri, {"requested_at": now_iso(), "by": by})

    def mark_cancelled(self, by: str) -> None:
        """For a sweep whose driver is already gone (it cannot record the cancel itself)."""
        index = self.read_index()
        if index is not None and index.status in ("running", "interrupted", "failed"):
            index.status, index.stopped_at = "cancelled", now_iso()
            index.stop_reason = f"cancelled by {by} (its driver had already stopped)"
            storage.write_text_atomic(self.index_uri, index.model_dump_json())

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
                 cap_bytes: int = 8 << 20, tail_bytes: int = 64 << 10, clock: Callable[[], float] = time.monotonic):
        self.directory_uri, self.attempt, self.stream = directory_uri, attempt, stream
        self.interval, self.cap_bytes, self.tail_bytes, self.clock = interval, cap_bytes, tail_bytes, clock
        self._segment = 0
        self._current = ""  # text of the current segment
        self._kept = 0  # bytes kept in sealed + current segments
        self._tail = ""  # past the cap: the last tail_bytes, written at close
        self._dropped = 0
        self._dirty = False
        self._last_flush = -math.inf
        self._lock = threading.Lock()

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
        self.flush(force=False)

    def _append(self, text: str) -> None:
        while text:
            room = SEGMENT_BYTES - len(self._current)
            self._current += text[:room]
            self._kept += len(text[:room])
            text = text[room:]
            self._dirty = True
            if len(self._current) >= SEGMENT_BYTES:
                self._put()  # sealed: written once more, complete
                self._segment += 1
                self._current = ""
                self._dirty = False

    def _put(self) -> None:
        name = f"{self.attempt:03d}-{self.stream}-{self._segment:04d}.log"
        storage.write_text_atomic(storage.join(self.directory_uri, name), self._current)

    def flush(self, force: bool = True) -> None:
        """Write the current segment if it changed (and, unless ``force``, if ``interval`` passed)."""
        with self._lock:
            if not self._dirty or (not force and self.clock() - self._last_flush < self.interval):
                return
            self._put()
            self._dirty = False
            self._last_flush = self.clock()

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
        self._best: TrialRecord | None = None
        self._best_value: float | None = None
        for t in self.trials.values():
            self._consider_best(t)
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

    def add_result(self, record: TrialRecord, entry: EpochResult) -> None:
        # A re-run epoch (after a crash or a PBT exploit) replaces what came after its checkpoint.
        if record.history and record.history[-1].epoch >= entry.epoch:
            record.history = [h for h in record.history if h.epoch < entry.epoch]
        record.history.append(entry)
        record.epochs = entry.epoch
        record.best = self.index.objective.best_epoch(record.history)
        self._consider_best(record)

    def _consider_best(self, record: TrialRecord) -> None:
        """Keep the sweep's best trial current in O(1) per result."""
        metric, objective = self.index.objective.metric, self.index.objective
        value = record.best.metric(metric) if record.best else None
        if self._best is record and (value is None or objective.better(self._best_value, value)):
            # The best trial lost its best epoch (a re-run after a PBT exploit replaced it): rare,
            # so look at every trial again rather than claim a best that is gone.
            self._best, self._best_value = None, None
            for t in self.trials.values():
                if t is not record:
                    self._consider_best(t)
            if value is None:
                return
        if value is None:
            return
        if self._best is None or objective.better(value, self._best_value) or (
                value == self._best_value and record.trial_id < self._best.trial_id):
            self._best, self._best_value = record, value
        elif self._best is record:
            self._best_value = value

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


def new_index(name: str, objective: Objective, *, max_epochs: int, num_trials: int, attempt: int) -> SweepIndex:
    started = now_iso()
    return SweepIndex(sweep=name, objective=objective, max_epochs=max_epochs, num_trials=num_trials,
                      started_at=started, updated_at=started, driver_attempt=attempt)
