"""A trial's TensorBoard run, written by the trial itself (rank 0), next to its record:

    <sweep>/<trial>/tensorboard/events.out.tfevents.<attempt>.<segment>.trial   (service/core/record.py)

so that ``tensorboard --logdir <storage>/<sweep>`` shows one run per trial, ``<trial>/tensorboard``:

- per epoch (the step), every number the record keeps of it (``RESULT_KEYS``: val_acc, val_loss,
  train_acc, train_loss, lr, epoch_seconds, samples_per_second, ...), under the record's names,
  plus ``best_<objective>``: the best objective value up to that epoch (the record's ``best``);
- the HParams plugin's session: the trial's searched config (by dotted spec path) as hparams, the
  objective's best and the last epoch's accuracies and losses as its metrics, one row per trial.

tensorboardX makes the records (neither TensorFlow nor the ``tensorboard`` package needed); it
imports torch, hence here in the trial and never in the driver.

Restarts and resumes: every start of the trial (a crash restart, a driver resume, a PBT exploit) is
a new attempt with its own files, named to sort after the earlier ones, so nothing earlier is
rewritten. Each attempt begins with a SessionLog START at its first epoch: TensorBoard's readers
then drop the earlier attempts' events from that epoch on (TensorBoard's own restart rule; its
fast loader does the same for any step written again), as the record's history drops a re-run
epoch's older entry. Limitation: the HParams plugin keeps a run's first session start, so a PBT
trial's row shows the config it started with (its record has the mutated one).

Writes: local storage appends each epoch's records to the attempt's file (TensorBoard reads files
as they grow, and keeps reading a file by its handle: a file replaced by rename stops updating in
its fast loader); a reader sees whole records, or a last one still being written, which it reads
at its next reload. S3 has no append: the attempt's current object is rewritten whole each epoch
(one PUT: the old object or the new one, the new one the old plus this epoch), up to SEGMENT_BYTES,
then sealed and the next one begun, so an epoch costs at most one PUT of SEGMENT_BYTES. A failed
write never fails the trial: the trial's log gets one warning and the next epoch tries again.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import time
from typing import Any, Callable

from service.core import storage
from service.core.record import RESULT_KEYS, SweepStore

SEGMENT_BYTES = 256 * 1024  # S3: an object is rewritten each epoch until it holds this many bytes
SCALARS = tuple(k for k in RESULT_KEYS if k != "epoch")  # the epoch is the step
FINAL_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")  # HParams metrics: the last epoch's
_FILE = re.compile(r"^events\.out\.tfevents\.(\d{6})\.(\d{4})\.trial$")


def event_file_name(attempt: int, segment: int) -> str:
    """``tfevents`` in the name makes it an event file for TensorBoard, which reads a run's files
    in name order: attempts in order, and segments within one."""
    return f"events.out.tfevents.{attempt:06d}.{segment:04d}.trial"


def best_tag(metric: str) -> str:
    return f"best_{metric}"


def next_attempt(directory_uri: str) -> int:
    """1 + the highest attempt with an event file in ``directory_uri`` (one listing)."""
    try:
        names = storage.list_files(directory_uri)
    except FileNotFoundError:
        names = []
    return max((int(m[1]) for m in map(_FILE.match, names) if m), default=0) + 1


class TrialBoard:
    """One attempt's event files. ``epoch(metrics)`` after each epoch; never raises.

    ``hparams``: the trial's searched config by dotted spec path (values: numbers, strings, bools;
    anything else as JSON text). ``objective``/``mode``: the metric the sweep optimizes and
    ``"max"``/``"min"``. ``epochs``: the trial's epoch budget (count); its last epoch ends the
    HParams session as a success. ``first_epoch``: this attempt's first epoch (1-based; above 1
    after a restore). ``prior_best``: the objective's best over the epochs before ``first_epoch``
    (None: none yet). ``attempt``: None = the next after those in storage. ``say``: where the one
    warning goes (the trial's log). ``clock``: wall time, seconds since the Unix epoch."""

    def __init__(self, directory_uri: str, *, hparams: dict[str, Any], objective: str, mode: str, epochs: int,
                 first_epoch: int = 1, prior_best: float | None = None, attempt: int | None = None,
                 say: Callable[[str], None] = print, clock: Callable[[], float] = time.time):
        from tensorboardX.proto.event_pb2 import SessionLog
        from tensorboardX.summary import hparams as hparams_summaries

        self.directory_uri, self.objective, self.mode, self.epochs = directory_uri, objective, mode, epochs
        self.say, self.clock = say, clock
        self.best = prior_best
        self.attempt = next_attempt(directory_uri) if attempt is None else attempt
        self._segment = 0  # the attempt's current file
        self._landed = b""  # S3: the current object's bytes as last written
        self._landed_locally = 0  # local: bytes appended to the current file
        self._warned = False
        # Every event file begins with its format version (2: restarts are marked by SessionLog).
        self._head = _record(self._event(file_version="brain.Event:2"))
        metrics = dict.fromkeys([best_tag(objective), *FINAL_METRICS])
        experiment, start, self._end = hparams_summaries({k: _hparam(v) for k, v in hparams.items()}, metrics)
        self._pending = (  # records not yet written (never the head)
            _record(self._event(step=first_epoch, session_log=SessionLog(status=SessionLog.START)))
            + _record(self._event(summary=experiment))  # step 0: no restart's START purges it
            + _record(self._event(summary=start))
        )

    def _event(self, **fields):
        from tensorboardX.proto.event_pb2 import Event

        return Event(wall_time=self.clock(), **fields)

    @property
    def uri(self) -> str:
        """The event file this attempt writes now."""
        return storage.join(self.directory_uri, event_file_name(self.attempt, self._segment))

    def epoch(self, metrics: dict[str, Any]) -> None:
        """This epoch's numbers (the loop's report: ``metrics["epoch"]`` is the step) into the run."""
        try:
            self._pending += self._epoch_records(metrics)
            self._land()
        except Exception as err:  # a storage outage, a full disk: the trial trains on
            if not self._warned:
                self._warned = True
                self.say(f"warning: could not write this trial's TensorBoard events to {self.directory_uri} "
                         f"({type(err).__name__}: {err}); training goes on, later epochs try again")

    def _epoch_records(self, metrics: dict[str, Any]) -> bytes:
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.summary import scalar

        epoch = int(metrics["epoch"])
        value = metrics.get(self.objective)
        if _number(value) and not math.isnan(value) and (
                self.best is None or (value > self.best if self.mode == "max" else value < self.best)):
            self.best = float(value)
        values = [scalar(key, metrics[key]).value[0] for key in SCALARS if _number(metrics.get(key))]
        if self.best is not None:
            values.append(scalar(best_tag(self.objective), self.best).value[0])
        records = _record(self._event(step=epoch, summary=Summary(value=values)))  # one record: the epoch whole
        if epoch >= self.epochs:
            records += _record(self._event(step=epoch, summary=self._end))  # the session ended: success
        return records

    def _land(self) -> None:
        """Write the pending records (see the module docstring: append locally, rewrite on S3)."""
        uri = self.uri
        if storage.is_s3(uri):
            data = (self._landed or self._head) + self._pending
            storage.write_bytes_atomic(uri, data)
            self._landed, self._pending = data, b""
            if len(self._landed) >= SEGMENT_BYTES:  # sealed: the next epoch begins the next object
                self._segment, self._landed = self._segment + 1, b""
            return
        path = storage.local_path(uri)
        fresh = self._landed_locally == 0
        data = (self._head if fresh else b"") + self._pending
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                written = os.write(fd, data)  # one write: the epoch's records together
            finally:
                os.close(fd)
            if written != len(data):
                raise OSError(f"wrote {written} of {len(data)} bytes")
        except OSError as err:
            # The file may now end in half a record, which would hide whatever came after it: the
            # next epoch begins a new file with everything still pending.
            if not fresh or path.exists():
                self._segment, self._landed_locally = self._segment + 1, 0
            raise storage.local_error(err, uri) from err
        self._landed_locally += written
        self._pending = b""


def trial_board(spec, trial_id: str, hparams: dict[str, Any], *, first_epoch: int,
                say: Callable[[str], None] = print) -> TrialBoard | None:
    """The trial's board for this attempt (``spec``: the trial's concrete SweepSpec), or None with
    a warning in the trial's log when its directory cannot be listed. After a restore
    (``first_epoch`` > 1) the best objective so far comes from the trial's record (one read)."""
    store = SweepStore(spec.storage.uri, spec.name)
    try:
        prior_best = _best_before(store, trial_id, first_epoch, spec.objective) if first_epoch > 1 else None
        return TrialBoard(store.tensorboard_uri(trial_id), hparams=hparams, objective=spec.objective.metric,
                          mode=spec.objective.mode, epochs=spec.train.epochs, first_epoch=first_epoch,
                          prior_best=prior_best, say=say)
    except Exception as err:  # storage unreachable: the trial trains without its TensorBoard run
        say(f"warning: no TensorBoard events for this trial ({type(err).__name__}: {err})")
        return None


def _best_before(store: SweepStore, trial_id: str, first_epoch: int, objective) -> float | None:
    from service.core.record import Objective

    record = store.read_trial(trial_id)
    if record is None:
        return None
    best = Objective(metric=objective.metric, mode=objective.mode).best_epoch(
        h for h in record.history if h.epoch < first_epoch)
    return None if best is None else best.metric(objective.metric)


def _hparam(value: Any) -> Any:
    """HParams hold numbers, strings and bools; a searched section (a dict, a list) as JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _record(event) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the serialized event, its masked CRC-32C."""
    from tensorboardX.record_writer import masked_crc32c

    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))
