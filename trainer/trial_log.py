"""A trial's own output, kept in storage next to the trial (service/core/record.py's layout).

    with captured_output(store, trial_id):
        ...train...

Everything the trial prints (stdout, stderr, warnings) still reaches Ray's worker log, and is
also appended to ``<sweep>/<trial>/logs/<attempt>-<stream>-<segment>.log`` (flushed every few
seconds, and at the end). A trial that raises leaves its full traceback there before the
exception goes on to Tune. Each start of the trial (a restart after a crash, a resume after a
pause or a driver restart) is a new attempt, so nothing earlier is overwritten. Rank 0 always
keeps its log; other ranks of an N-worker trial only when they fail (their output mostly
repeats rank 0's). No torch here: the driver's trainable imports this.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import traceback

from service.core.record import SegmentedLog, SweepStore, next_log_attempt

FLUSH_SECONDS = 5.0  # a killed trial loses at most this much of its output
_current: list["_Capture"] = []  # the capture of the trial this process runs now (reused actors run one at a time)


class _Tee:
    """A text stream that writes to the original stream and to ``sink``."""

    _inside = threading.local()  # Ray Train's workers route stdout through logging back to stderr

    def __init__(self, original, sink):
        self._original, self._sink = original, sink

    def write(self, text: str) -> int:
        if getattr(self._inside, "active", False):  # our own write coming back: logged once already
            return self._original.write(text)
        self._inside.active = True
        try:
            self._sink(text)
            return self._original.write(text)
        finally:
            self._inside.active = False

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding, ...: the original's
        return getattr(self._original, name)


class _Capture:
    """``keep``: write the log as it grows; else hold the last MEMORY_TAIL characters in memory and
    write them only if the block fails."""

    MEMORY_TAIL = 1 << 20

    def __init__(self, log: SegmentedLog, keep: bool):
        self.log, self.keep = log, keep
        self.stdout, self.stderr = sys.stdout, sys.stderr
        self._held = ""
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="trial-log-flush", daemon=True)

    def write(self, text: str) -> None:
        if self.keep:
            self._safely(lambda: self.log.write(text))
        else:
            self._held = (self._held + text)[-self.MEMORY_TAIL:]

    def start(self) -> None:
        sys.stdout, sys.stderr = _Tee(self.stdout, self.write), _Tee(self.stderr, self.write)
        if self.keep:
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self._safely(self.log.flush)

    def stop(self, failed: bool) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if isinstance(sys.stdout, _Tee) and sys.stdout._sink == self.write:
            sys.stdout, sys.stderr = self.stdout, self.stderr
        if not self.keep and failed:
            self._safely(lambda: self.log.write(self._held))
        if self.keep or failed:
            self._safely(self.log.close)

    @staticmethod
    def _safely(call) -> None:
        try:
            call()
        except Exception as err:  # storage outage: the output is still in Ray's worker log
            print(f"warning: could not write the trial log to storage: {err}", file=sys.__stderr__)


@contextlib.contextmanager
def captured_output(store: SweepStore, trial_id: str, attempt: int | None = None, *, rank: int | None = None):
    """Tee this process's stdout/stderr into the trial's log for the duration of the block.
    ``attempt``: None = the next one after those already in storage. ``rank``: None for the
    trainable itself, N for rank N of an N-worker trial (logged apart, kept for rank 0 or on failure)."""
    directory = store.trial_log_uri(trial_id)
    stream = "trial" if rank is None else f"rank{rank}"
    if attempt is None:
        attempt = next_log_attempt(directory, stream)
    # A trial Tune stopped early may never return from its last report (reused actors): the next
    # trial in this process ends that capture first.
    while _current:
        _current.pop().stop(failed=False)
    # Written by the capture's flusher only: write() runs inside whatever prints or logs, logging
    # handlers' locks held, so it must never wait on storage (service/core/record.py SegmentedLog).
    capture = _Capture(SegmentedLog(directory, attempt, stream, interval=FLUSH_SECONDS, cap_bytes=4 << 20,
                                    flush_on_write=False),
                       keep=rank in (None, 0))
    _current.append(capture)
    capture.start()
    failed = False
    try:
        yield attempt
    except BaseException:
        failed = True
        capture.write(traceback.format_exc())
        raise
    finally:
        capture.stop(failed)
        if capture in _current:
            _current.remove(capture)
