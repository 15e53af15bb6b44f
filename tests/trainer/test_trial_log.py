"""A trial's own output teed into storage (trainer/trial_log.py): whatever prints or logs, on any
thread, never waits on storage, so a logging call can never deadlock with the log's flusher."""

from __future__ import annotations

import logging
import sys
import threading

import pytest

from service.core import storage
from service.core.record import SweepStore
from trainer import trial_log


@pytest.mark.timeout(60)  # deadlocked, leaving the block would hang too: fail in a minute, not ten
def test_a_thread_logging_while_the_flusher_writes_to_storage_never_deadlocks(tmp_path, monkeypatch):
    """The deadlock a DDP trial's rank 0 met on S3: thread A logs (its handler's lock held) and
    writes to the teed stderr, while the flusher writes the log to storage and the storage layer
    logs (botocore does: "Found credentials in environment variables."), which needs A's handler
    lock. Forced here in that order: the storage write waits until A is inside the handler, then
    logs. Before the fix the flusher held the log's lock through the write and both threads
    waited on each other for ever."""
    in_handler, in_storage = threading.Event(), threading.Event()

    class Handler(logging.StreamHandler):
        def emit(self, record):  # called with this handler's lock held
            if record.name == "thread-a":
                in_handler.set()
            super().emit(record)

    real_write = storage.write_text_atomic

    def write_that_logs(uri, text):  # the storage layer logging mid-write, as botocore does
        in_storage.set()
        in_handler.wait(5)
        logging.getLogger("botocore.credentials").warning("Found credentials in environment variables.")
        real_write(uri, text)

    store = SweepStore(str(tmp_path), "sw")
    logger = logging.getLogger("thread-a")
    with trial_log.captured_output(store, "t_1", attempt=1):
        handler = Handler(sys.stderr)  # sys.stderr is the tee now, as a worker's logging handler sees it
        root = logging.getLogger()
        root.addHandler(handler)
        monkeypatch.setattr(storage, "write_text_atomic", write_that_logs)
        try:
            print("a line before the flush")
            flusher = threading.Thread(target=trial_log._current[-1].log.flush, daemon=True)
            thread_a = threading.Thread(target=lambda: (in_storage.wait(5), logger.warning("thread A's line")), daemon=True)
            flusher.start()
            thread_a.start()
            flusher.join(20)
            thread_a.join(20)
            assert not flusher.is_alive() and not thread_a.is_alive(), "the flusher and a logging thread deadlocked"
        finally:
            root.removeHandler(handler)
            monkeypatch.setattr(storage, "write_text_atomic", real_write)
    text = store.read_trial_log("t_1")
    for line in ("a line before the flush", "thread A's line", "Found credentials in environment variables."):
        assert line in text, text
