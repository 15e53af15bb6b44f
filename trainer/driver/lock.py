"""One driver per sweep, for sure: attempt claims created only if absent, and a fence.

    lock = DriverLock(store, on_lost=stop_the_sweep)
    lock.acquire()            # SweepBusy when another driver is alive or wins the race
    ... lock.lost ...         # checked before every write the driver makes
    lock.release("finished")

Every driver start claims the next attempt number by creating
``<sweep>/driver/attempt-NNNNNN.json`` with a conditional create (S3 ``If-None-Match: *``, locally
a hard link that refuses an existing name): of two drivers racing for attempt N exactly one
creates it, whatever the storage's latency. A driver claims N+1 only once the owner of N is gone:
on the same host its pid no longer runs; elsewhere (a RayJob retried on another pod) its last sign
of life is older than ``STALE_SECONDS``.

The fence: the owner of attempt N checks every ``FENCE_SECONDS`` whether attempt N+1 exists (one
HEAD). If it does, another driver took the sweep over (this one was presumed dead, e.g. cut off
from storage for minutes): ``lost`` turns true, ``on_lost`` is called once, and the driver writes
nothing more. ``driver.json`` is the owner's human-readable state (heartbeat, how it ended);
only the owner writes it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Callable

from service.core import storage
from service.core.errors import SweepBusy
from service.core.record import SweepStore

log = logging.getLogger(__name__)

_CLAIM_NAME = re.compile(r"attempt-(\d+)\.json$")


class DriverLock:
    HEARTBEAT_SECONDS = 10.0  # driver.json's heartbeat
    FENCE_SECONDS = 1.0  # how often the owner looks for a newer attempt's claim
    STALE_SECONDS = 90.0  # > the longest storage outage we ride out, so a live driver keeps its lock

    def __init__(self, store: SweepStore, *, on_lost: Callable[[], None] = lambda: None):
        self.store = store
        self.uri = store.lock_uri
        self.sweep_uri = store.uri
        self.token = uuid.uuid4().hex
        self.attempt = 0
        self.on_lost = on_lost
        self._lost = threading.Event()  # another attempt owns the sweep now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.record: dict = {}

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    # ---------------------------------------------------------------------- who owns it
    def latest_claim(self) -> dict | None:
        """The highest attempt claimed so far (None: no driver ever claimed one; older sweeps)."""
        try:
            names = storage.list_files(self.store.attempt_claims_uri)
        except FileNotFoundError:
            names = []
        numbers = [int(m.group(1)) for m in map(_CLAIM_NAME.search, names) if m]
        if not numbers:
            return None
        return storage.read_json_if_exists(self.store.attempt_claim_uri(max(numbers))) or {"attempt": max(numbers)}

    def check(self) -> dict | None:
        """The current owner (the latest claim, with its state from driver.json), or SweepBusy if
        it is alive. Writes nothing."""
        state = storage.read_json_if_exists(self.uri)
        claim = self.latest_claim()
        if claim is None:
            owner = state  # a sweep from before attempt claims: driver.json alone
        elif state and state.get("attempt") == claim.get("attempt"):
            owner = {**claim, **state}
        else:  # claimed, but its driver.json was not written (yet, or it died first)
            owner = {**claim, "state": "running", "heartbeat_at": claim.get("claimed_at_s", 0)}
        if owner and owner.get("state") == "running" and self._alive(owner):
            age = time.time() - owner.get("heartbeat_at", 0)
            raise SweepBusy(
                f"sweep at {self.sweep_uri} is being run by driver attempt {owner['attempt']} "
                f"(host {owner.get('host')}, pid {owner.get('pid')}, last heartbeat {age:.0f} s ago); "
                f"nothing was written.\n  Wait for it to finish (sweepctl leaderboard shows progress), "
                f"or stop it; a driver on another host counts as gone {self.STALE_SECONDS:.0f} s after its last heartbeat."
            )
        if owner is not None and state is not None:
            owner["previous"] = state.get("previous", [])
        return owner

    def _alive(self, owner: dict) -> bool:
        if owner.get("host") == socket.gethostname():
            try:
                os.kill(int(owner["pid"]), 0)
                return True
            except ProcessLookupError:
                return False
            except PermissionError:  # a live process of another user
                return True
        last_sign = max(owner.get("heartbeat_at", 0), owner.get("claimed_at_s", 0))
        return time.time() - last_sign < self.STALE_SECONDS

    # ---------------------------------------------------------------------- take, keep, give back
    def acquire(self) -> None:
        """Claim the next attempt; SweepBusy (and nothing written but, at most, the lost claim) otherwise."""
        owner = self.check()
        # The next attempt after the one just judged gone, from that same view: a driver that
        # claimed it meanwhile makes the create below fail (never: a higher number past a live one).
        self.attempt = (owner or {}).get("attempt", 0) + 1
        now = time.time()
        mine = {"attempt": self.attempt, "host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                "claimed_at": _iso(now), "claimed_at_s": now, **_process_identity()}
        if not storage.create_exclusive(self.store.attempt_claim_uri(self.attempt), json.dumps(mine).encode()):
            raise SweepBusy(f"another driver started sweep at {self.sweep_uri} at the same moment and claimed "
                            f"attempt {self.attempt}; nothing else was written.")
        previous = (owner or {}).get("previous", [])[-20:] + ([_without(owner, "previous")] if owner else [])
        self.record = {**mine, "state": "running", "started_at": _iso(now), "heartbeat_at": now, "previous": previous}
        storage.write_json_atomic(self.uri, self.record)
        self._thread = threading.Thread(target=self._watch, name="sweep-driver-lock", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(self.FENCE_SECONDS):
            if self._fenced_out():
                return
            if time.monotonic() - last_beat >= self.HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                self._beat()

    def _fenced_out(self) -> bool:
        """True (and on_lost called once) when a newer attempt has claimed the sweep."""
        if self.lost:
            return True
        try:
            newer = storage.file_exists(self.store.attempt_claim_uri(self.attempt + 1))  # one HEAD a second
        except Exception as err:  # storage outage: look again at the next tick
            log.warning("driver lock check at %s failed: %s", self.store.attempt_claims_uri, err)
            return False
        if newer:
            self._lose()
        return newer

    def _lose(self) -> None:
        if not self._lost.is_set():
            self._lost.set()
            self.on_lost()

    def _beat(self, state: str = "running", reason: str | None = None) -> None:
        try:
            current = storage.read_json_if_exists(self.uri) or {}
            if current.get("token") not in (None, self.token):  # driver.json rewritten by another attempt
                self._lose()
                return
            self.record.update(state=state, heartbeat_at=time.time())
            if state != "running":
                self.record.update(stopped_at=_iso(time.time()), stop_reason=reason)
            storage.write_json_atomic(self.uri, self.record)
        except Exception as err:  # storage outage: try again at the next beat
            log.warning("driver heartbeat to %s failed: %s", self.uri, err)

    def release(self, state: str, reason: str | None = None) -> None:
        """Stop watching; unless fenced out, record how this attempt ended (finished, interrupted, failed)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if not self._fenced_out():
            self._beat(state, reason)


def _process_identity() -> dict:
    """What tells this driver apart from a later process given the same pid, so that `sweepctl
    cancel` signals it only if it is provably this one (service/control/backends.py DriverProcess):
    the boot it runs in and its start time (/proc/self/stat field 22, clock ticks since boot).
    Empty where there is no /proc: such a driver is never signalled by a cancel."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot, open("/proc/self/stat") as stat:
            boot_id, start_time = boot.read().strip(), int(stat.read().rsplit(")", 1)[1].split()[22 - 3])
    except (OSError, IndexError, ValueError):
        return {}
    return {"boot_id": boot_id, "pid_start_time": start_time}


def _without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")
