"""The sweep driver: SweepSpec → Ray Tune run → the sweep record, with a live progress line.

    index = run_sweep(spec)

What lands where in storage is service/core/record.py's (the layout's one owner); the driver
writes the record as trials report (trainer/driver/events.py), so a crash never hides what had
finished. One driver per sweep: ``DriverLock``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Callable
import logging

import yaml

# The driver prints one progress line; Tune's own tables and its snapshot-frequency warning
# (harmless for short trials) would bury it. Read by Ray at import/run time, so set first.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Tune snapshots its experiment state (which trials finished, each one's latest checkpoint) every
# 10+ s by default; a driver killed in between resumes from an older view and re-runs epochs.
# A snapshot is one small JSON file, so take one every 2 s.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
# Tune's default loggers include TensorBoardX, which imports torch into the driver (~3 s per sweep)
# for event files nothing here reads; result.json per trial is kept (JsonLoggerCallback below).
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Tune logs every failed trial's whole traceback on the driver; ours says it in one line with the
# command that prints it (the traceback is in the trial's log in storage, trainer/trial_log.py).
os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")

from service.core import storage  # noqa: E402
from service.core.errors import SweepBusy, UserError  # noqa: E402
from service.core.record import (  # noqa: E402
    Objective, RecordWriter, SegmentedLog, SweepIndex, SweepStore, new_index,
)
from service.core.spec import SweepSpec, max_epochs, num_trials  # noqa: E402
from trainer.driver import space  # noqa: E402

log = logging.getLogger(__name__)


def run_sweep(
    spec: SweepSpec,
    *,
    resume: bool = False,
    echo: Callable[[str], None] = print,
    callbacks: list = (),
    wait_for_resources: bool = False,
    metrics=None,
) -> SweepIndex:
    """Run the whole sweep (Ray in-process unless already connected) and return its final index.

    ``resume``: continue the sweep stored under <storage>/<name> (Tune's restore: finished trials
    are kept, unfinished ones continue from their last checkpoint). ``callbacks``: more Tune
    callbacks, called after ours. ``metrics``: a ``SweepMetrics`` to feed instead of the exporter's
    (tests). ``wait_for_resources``: on an autoscaling cluster
    (KubeRay) trials may wait for nodes; otherwise a trial that can never fit the cluster is an
    error before anything starts. Raises ``SweepBusy`` (before writing anything) when another
    driver is running this sweep."""
    import ray
    from ray import tune

    from trainer.driver.metrics import start_exporter
    from trainer.trainable import tune_trial  # no torch in the driver

    store = SweepStore(spec.storage.uri, spec.name)
    sweep_uri = store.uri
    fs, storage_path = storage.pyarrow_filesystem(spec.storage.uri)
    if not ray.is_initialized():
        # Trial stdout stays in the trial logs; errors reach the terminal as one line each
        # (trainer/driver/events.py), their tracebacks the trial's log in storage (sweepctl logs --trial).
        # A Ray we start here: its workers would keep the environment of its start, so hand them
        # the S3 endpoint and credentials. On a cluster (RAY_ADDRESS, e.g. a RayJob) every pod has
        # them from the Secret already, and a job's runtime env is visible to anyone with the
        # dashboard: nothing is forwarded.
        joining = bool(os.environ.get("RAY_ADDRESS"))
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                 runtime_env=None if joining else {"env_vars": storage.forwarded_env()})
    if not wait_for_resources:
        check_trial_fits(spec, ray.cluster_resources())

    lock = DriverLock(store)
    lock.check()  # another live driver: say so (before the exporter finds its port taken)
    # Prometheus exporter (spec.metrics.port; 0: none). A busy port fails before anything is written.
    exporter = start_exporter(spec)
    try:
        lock.acquire()  # refuses (SweepBusy) before anything is written when another driver is alive
    except BaseException:
        if exporter:
            exporter.stop()
        raise
    events = None
    try:
        if not resume:
            storage.write_text_atomic(store.spec_uri, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        events = _events(spec, store, lock, echo, resume=resume, exporter=exporter, metrics=metrics)
        trainable = tune.with_resources(
            tune.with_parameters(tune_trial, spec_json=spec.model_dump_json()), _trial_resources(spec)
        )
        from ray.tune.logger import JsonLoggerCallback

        all_callbacks = [events, *callbacks, JsonLoggerCallback()]
        experiment_path = f"{storage_path}/{spec.name}"  # inside `fs` ("bucket/prefix/name" on S3)
        if resume and tune.Tuner.can_restore(experiment_path, storage_filesystem=fs):
            echo(f"resuming sweep {spec.name} (driver attempt {lock.attempt}) from {sweep_uri}")
            tuner = tune.Tuner.restore(
                experiment_path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
            )
            # The restored run config holds the previous driver's callbacks (pickled in tuner.pkl);
            # Tuner.restore takes none, so this driver's replace them in the config it will run.
            tuner._local_tuner.get_run_config().callbacks = all_callbacks
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=space.param_space(spec),
                tune_config=tune.TuneConfig(
                    metric=spec.objective.metric,
                    mode=spec.objective.mode,
                    search_alg=space.searcher(spec, max_concurrent=_max_concurrent(spec)),
                    scheduler=space.scheduler(spec),
                    num_samples=space.num_samples(spec),
                    # A fresh Python worker per trial costs seconds; 1-worker trials reuse theirs.
                    reuse_actors=spec.resources.workers_per_trial == 1,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=spec.name,
                    storage_path=storage_path,
                    storage_filesystem=fs,
                    # Retention (checkpoint.keep) is the driver's (trainer/driver/events.py):
                    # Tune's num_to_keep would force an experiment snapshot at every checkpoint.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                    # A crashed trial (killed worker, lost node) restarts from its last checkpoint.
                    failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                    callbacks=all_callbacks,
                    verbose=0,  # the progress line (trainer/driver/events.py) instead of Tune's tables
                ),
            )
        tuner.fit()
        index = events.finish()
        lock.release("finished")
        return index
    except BaseException:
        if events is not None:  # say so in the index (one try: an interrupt must not wait on storage)
            events.writer.write_index("interrupted", events.wall_seconds())
            events.progress.close()
        lock.release("interrupted")
        raise
    finally:
        if exporter:
            exporter.stop()  # up → 0, one last scrape if Prometheus is watching, then the port is free


def _events(spec: SweepSpec, store: SweepStore, lock: "DriverLock", echo, *, resume: bool, exporter, metrics):
    """The driver's one Tune callback, with its sinks: the record (continuing the stored one on
    resume: finished trials are not run again and keep what they recorded), the exporter, the
    progress line (terminal + the driver log in storage)."""
    from trainer.driver.events import Progress, SweepEvents

    objective = Objective(metric=spec.objective.metric, mode=spec.objective.mode)
    previous = store.read_index() if resume else None
    index = new_index(spec.name, objective, max_epochs=max_epochs(spec), num_trials=num_trials(spec),
                      attempt=lock.attempt)
    if previous is not None:
        index.started_at = previous.started_at
    trials = store.read_trials(previous) if previous is not None else []
    writer = RecordWriter(store, index, trials, fenced=lambda: lock.lost, warn=lambda m: echo(f"warning: {m}"))
    progress = Progress(echo, SegmentedLog(store.driver_log_uri(), attempt=lock.attempt, stream="driver"))
    return SweepEvents(
        spec, writer, progress, attempt=lock.attempt,
        metrics=metrics if metrics is not None else (exporter.metrics if exporter else None),
        on_setup=exporter.on_setup if exporter else None,
        seconds_before=previous.wall_seconds if previous is not None else 0.0,
    )


def check_trial_fits(spec: SweepSpec, cluster: dict) -> None:
    """Refuse a sweep whose single trial needs more CPUs/GPUs than the whole cluster has:
    Tune would wait for them forever."""
    r = spec.resources
    need = {"CPU": r.cpus_per_worker * r.workers_per_trial, "GPU": r.gpus_per_worker * r.workers_per_trial}
    short = {k: v for k, v in need.items() if v > cluster.get(k, 0)}
    if short:
        wanted = ", ".join(f"{v:g} {k}" for k, v in need.items() if v)
        have = ", ".join(f"{cluster.get(k, 0):g} {k}" for k in need)
        raise UserError(
            f"one trial needs {wanted} ({r.workers_per_trial} worker(s) × resources.cpus_per_worker/"
            f"gpus_per_worker) but this Ray cluster has {have}; nothing was started.\n"
            f"  Lower them, e.g. --set resources.cpus_per_worker=1 --set resources.gpus_per_worker=0"
        )


class DriverLock:
    """One driver per sweep. ``driver.json`` in the sweep's storage names the current attempt
    (a number that grows with every driver start), its host/pid and a heartbeat.

    A new driver refuses while the recorded one is alive: on the same host, its pid still runs;
    elsewhere (a RayJob retried on another pod), its heartbeat is younger than STALE_SECONDS.
    The heartbeat thread also fences: if another attempt took over (this driver was presumed dead,
    e.g. cut off from storage for minutes), this one stops writing the record."""

    HEARTBEAT_SECONDS = 10.0
    STALE_SECONDS = 90.0  # > the longest storage outage we ride out, so a live driver keeps its lock

    def __init__(self, store: SweepStore):
        self.uri = store.lock_uri
        self.sweep_uri = store.uri
        self.token = uuid.uuid4().hex
        self.attempt = 0
        self.lost = False  # another attempt owns the sweep now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> dict | None:
        """The recorded driver, or SweepBusy if it is alive. Writes nothing."""
        current = storage.read_json_if_exists(self.uri)
        if current and current.get("state") == "running" and self._alive(current):
            age = time.time() - current.get("heartbeat_at", 0)
            raise SweepBusy(
                f"sweep at {self.sweep_uri} is being run by driver attempt {current['attempt']} "
                f"(host {current['host']}, pid {current['pid']}, last heartbeat {age:.0f} s ago); "
                f"nothing was written.\n  Wait for it to finish (sweepctl leaderboard shows progress), "
                f"or stop it; a driver on another host counts as gone {self.STALE_SECONDS:.0f} s after its last heartbeat."
            )
        return current

    def acquire(self) -> None:
        current = self.check()
        self.attempt = (current or {}).get("attempt", 0) + 1
        self.record = {
            "attempt": self.attempt, "state": "running", "host": socket.gethostname(), "pid": os.getpid(),
            "token": self.token, "started_at": _now(), "heartbeat_at": time.time(),
            "previous": (current or {}).get("previous", [])[-20:] + ([_without(current, "previous")] if current else []),
        }
        storage.write_json_atomic(self.uri, self.record)
        # Two drivers starting at the same moment both write; the later write wins and the
        # earlier one sees a foreign token here and steps back before writing anything else.
        time.sleep(0.2)
        if (storage.read_json_if_exists(self.uri) or {}).get("token") != self.token:
            raise SweepBusy(f"another driver started sweep at {self.sweep_uri} at the same moment; nothing else was written.")
        self._thread = threading.Thread(target=self._heartbeat, name="sweep-driver-heartbeat", daemon=True)
        self._thread.start()

    def _alive(self, record: dict) -> bool:
        if record.get("host") == socket.gethostname():
            try:
                os.kill(int(record["pid"]), 0)
                return True
            except ProcessLookupError:
                return False
            except PermissionError:  # a live process of another user
                return True
        return time.time() - record.get("heartbeat_at", 0) < self.STALE_SECONDS

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_SECONDS):
            self._beat()

    def _beat(self, state: str = "running") -> None:
        try:
            current = storage.read_json_if_exists(self.uri) or {}
            if current.get("token") not in (None, self.token):
                self.lost = True
                return
            self.record.update(state=state, heartbeat_at=time.time())
            storage.write_json_atomic(self.uri, self.record)
        except Exception as err:  # storage outage: try again at the next beat
            log.warning("driver heartbeat to %s failed: %s", self.uri, err)

    def release(self, state: str) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if not self.lost:
            self._beat(state)


def _without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


def _trial_dirname(trial) -> str:
    """<storage>/<sweep>/<trial_id>/checkpoint_*: short and stable (the config is in the record)."""
    return trial.trial_id


def _trial_resources(spec: SweepSpec) -> dict:
    r = spec.resources
    if r.workers_per_trial == 1:
        return {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker}
    # N workers: the trial only starts a TorchTrainer, whose workers reserve their own CPUs/GPUs.
    # Ray refuses an empty request, so the coordinator reserves a token 1 MiB of memory, no CPU.
    return {"cpu": 0, "memory": 2**20}


def _max_concurrent(spec: SweepSpec) -> int | None:
    r = spec.resources
    if r.max_concurrent_trials:
        return r.max_concurrent_trials
    if r.workers_per_trial > 1 and spec.scheduler.name != "pbt":
        # Trials of N workers that cannot all be placed would wait on each other's worker groups.
        # (Not for PBT: it pauses trials, which frees their workers, and waits for the whole
        # population; a cap below the population size would wait forever.)
        import ray

        cpus = ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // (r.workers_per_trial * r.cpus_per_worker)))
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


