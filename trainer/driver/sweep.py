"""The sweep driver: SweepSpec → Ray Tune run → summary.json, with a live progress line.

    summary = run_sweep(spec)

Layout: <storage>/<name>/spec.yaml, <storage>/<name>/summary.json and Tune's experiment (trial
dirs with checkpoints) in the same directory. summary.json is rewritten (atomically) as trials
report, so a crash never hides what had finished.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path
from datetime import datetime, timezone
from typing import Callable
import logging

import yaml

# Our monitor prints one progress line; Tune's own tables and its snapshot-frequency warning
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

from ray.tune import Callback  # noqa: E402

from service.core import storage
from trainer.driver import space
from service.core.errors import SweepBusy, UserError
from service.core.spec import SweepSpec, max_epochs, num_trials, search_space

log = logging.getLogger(__name__)

SUMMARY = storage.SUMMARY
SPEC = storage.SPEC
DRIVER = "driver.json"  # which driver attempt owns the sweep, and its heartbeat
DRIVER_LOG = "driver.log"  # the progress lines, readable from storage (sweepctl logs, the service)
METRIC_KEYS = (
    "val_acc", "val_loss", "train_acc", "train_loss", "lr", "samples_per_second", "epoch_seconds",
    "resumed_from_epoch", "train_samples", "duplicate_samples", "checkpoint_seconds", "checkpoint_bytes",
)


def run_sweep(
    spec: SweepSpec,
    *,
    resume: bool = False,
    echo: Callable[[str], None] = print,
    callbacks: list = (),
    wait_for_resources: bool = False,
) -> dict:
    """Run the whole sweep (Ray in-process unless already connected) and return the summary.

    ``resume``: continue the sweep stored under <storage>/<name> (Tune's restore: finished trials
    are kept, unfinished ones continue from their last checkpoint). ``callbacks``: more Tune
    callbacks, called after our monitor. ``wait_for_resources``: on an autoscaling cluster
    (KubeRay) trials may wait for nodes; otherwise a trial that can never fit the cluster is an
    error before anything starts. Raises ``SweepBusy`` (before writing anything) when another
    driver is running this sweep."""
    import ray
    from ray import tune

    from trainer.driver.metrics import start_exporter
    from trainer.trainable import tune_trial  # no torch in the driver

    sweep_uri = storage.sweep_uri(spec.storage.uri, spec.name)
    fs, storage_path = storage.pyarrow_filesystem(spec.storage.uri)
    if not ray.is_initialized():
        # Trial stdout stays in the trial logs; errors reach the terminal through our monitor.
        # A Ray we start here: its workers would keep the environment of its start, so hand them
        # the S3 endpoint and credentials. On a cluster (RAY_ADDRESS, e.g. a RayJob) every pod has
        # them from the Secret already, and a job's runtime env is visible to anyone with the
        # dashboard: nothing is forwarded.
        joining = bool(os.environ.get("RAY_ADDRESS"))
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                 runtime_env=None if joining else {"env_vars": storage.forwarded_env()})
    if not wait_for_resources:
        check_trial_fits(spec, ray.cluster_resources())

    lock = DriverLock(sweep_uri)
    lock.check()  # another live driver: say so (before the exporter finds its port taken)
    # Prometheus exporter (spec.metrics.port; 0: none). A busy port fails before anything is written.
    exporter = start_exporter(spec)
    try:
        lock.acquire()  # refuses (SweepBusy) before anything is written when another driver is alive
    except BaseException:
        if exporter:
            exporter.stop()
        raise
    try:
        previous = storage.read_summary(spec.storage.uri, spec.name) if resume else None
        if not resume:
            storage.write_text_atomic(storage.join(sweep_uri, SPEC),
                                      yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        monitor = SweepMonitor(spec, sweep_uri, echo, attempt=lock.attempt, previous=previous, lock=lock)
        trainable = tune.with_resources(
            tune.with_parameters(tune_trial, spec_json=spec.model_dump_json()), _trial_resources(spec)
        )
        from ray.tune.logger import JsonLoggerCallback

        all_callbacks = [monitor, *callbacks, *([exporter.callback] if exporter else []), JsonLoggerCallback()]
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
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=spec.checkpoint.keep,
                        checkpoint_score_attribute=spec.objective.metric,
                        checkpoint_score_order=spec.objective.mode,
                    ),
                    # A crashed trial (killed worker, lost node) restarts from its last checkpoint.
                    failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                    callbacks=all_callbacks,
                    verbose=0,  # our monitor prints one progress line instead of Tune's tables
                ),
            )
        results = tuner.fit()
        summary = monitor.finish(results)
        lock.release("finished")
        return summary
    except BaseException:
        lock.release("interrupted")
        raise
    finally:
        if exporter:
            exporter.stop()  # up → 0, one last scrape if Prometheus is watching, then the port is free


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
    e.g. cut off from storage for minutes), this one stops writing the summary."""

    HEARTBEAT_SECONDS = 10.0
    STALE_SECONDS = 90.0  # > the longest storage outage we ride out, so a live driver keeps its lock

    def __init__(self, sweep_uri: str):
        self.uri = storage.join(sweep_uri, DRIVER)
        self.sweep_uri = sweep_uri
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
    """<storage>/<sweep>/<trial_id>/checkpoint_*: short and stable (the config is in summary.json)."""
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


class SweepMonitor(Callback):
    """Tune callback: keeps the summary current, writes it atomically, prints a progress line."""

    def __init__(self, spec: SweepSpec, sweep_uri: str, echo, *, attempt: int = 1,
                 previous: dict | None = None, lock: DriverLock | None = None):
        self.spec, self.echo, self.attempt, self.lock = spec, echo, attempt, lock
        self.summary_uri = storage.join(sweep_uri, SUMMARY)
        self.log_uri = storage.join(sweep_uri, DRIVER_LOG)
        self.metric, self.mode = spec.objective.metric, spec.objective.mode
        self.s3 = storage.is_s3(spec.storage.uri)
        self.started = time.time()
        self.last_write = 0.0
        # Resume: what the previous drivers recorded stays (finished trials are not run again).
        self.trials: dict[str, dict] = {t["trial_id"]: t for t in (previous or {}).get("trials", [])}
        self.seconds_before = (previous or {}).get("wall_seconds", 0.0)
        self.started_at = (previous or {}).get("started_at") or _now()
        self.log_lines = (storage.read_text(self.log_uri).splitlines() if previous and storage.exists(self.log_uri) else [])

    def __getstate__(self):
        # Tune pickles its callbacks into tuner.pkl; a resumed driver brings its own monitor,
        # so the heartbeat thread's lock need not (and cannot) travel.
        return {**self.__dict__, "lock": None}

    def say(self, line: str) -> None:
        """A progress line for the terminal, also kept in <sweep>/driver.log."""
        self.echo(line)
        self.log_lines.append(f"{_now()} {line}")

    # --- Tune hooks
    def on_trial_start(self, iteration, trials, trial, **info):
        self._trial(trial)["status"] = "running"
        self._update(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        record = self._trial(trial)
        record["config"] = self._config(trial)  # PBT mutates configs while trials run
        # attempt: the driver that recorded it (a resumed sweep must not count an epoch twice)
        epoch = {"epoch": result["epoch"], **{k: result[k] for k in METRIC_KEYS if k in result}, "attempt": self.attempt}
        record["val_split"] = result.get("val_split")
        donor = Path(result["restored_from"]).parent.name if result.get("restored_from") else None
        if result.get("restored_from"):
            result = {**result, "restored_from": self._uri(result["restored_from"])}
        if donor and donor != trial.trial_id:  # restored from another trial's checkpoint: a PBT exploit
            record["exploits"].append({
                "epoch": result["resumed_from_epoch"],
                "donor": donor,
                "donor_checkpoint": result["restored_from"],
                "restored_weights": result.get("restored_weights"),
                "config": record["config"],
            })
            self.say(f"trial {trial.trial_id} took over trial {donor}'s weights at epoch {result['resumed_from_epoch']}")
        record["history"] = [h for h in record["history"] if h["epoch"] < epoch["epoch"]] + [epoch]
        record["epochs"] = epoch["epoch"]
        record["seconds"] = result.get("time_total_s", record["seconds"])
        if result.get("checkpoint_path"):  # N-worker trials: Ray Train stores the checkpoint
            record["checkpoint"] = self._uri(result["checkpoint_path"])
        elif trial.checkpoint is not None:
            record["checkpoint"] = self._uri(trial.checkpoint.path)
        self._update(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        record = self._trial(trial)
        if record["epochs"] < self._epoch_budget(trial):
            record["status"], record["stop_reason"] = "stopped_early", f"{self.spec.scheduler.name} scheduler"
        else:
            record["status"], record["stop_reason"] = "terminated", "completed all epochs"
        self._update(trials, force=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        record = self._trial(trial)
        record["restarts"] += 1
        self.say(f"trial {trial.trial_id} crashed; restarting from its last checkpoint")
        self._update(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        record = self._trial(trial)
        record["status"] = "error"
        record["stop_reason"] = _first_line(trial.get_error())
        self.say(f"trial {trial.trial_id} failed: {record['stop_reason']} (log: {trial.path})")
        self._update(trials, force=True)

    # --- summary
    def _uri(self, path: str) -> str:
        """Ray reports paths inside its storage filesystem ("bucket/prefix/..." on S3): make URIs."""
        return path if not self.s3 or path.startswith("s3://") else "s3://" + path

    def _config(self, trial) -> dict:
        """The trial's searched and mutated values, by dotted path."""
        keys = list(search_space(self.spec)) + list(self.spec.scheduler.mutations)
        return {k: trial.config[k] for k in dict.fromkeys(keys) if k in trial.config}

    def _epoch_budget(self, trial) -> int:
        return int(trial.config.get("train.epochs", self.spec.train.epochs))

    def _trial(self, trial) -> dict:
        if trial.trial_id not in self.trials:
            self.trials[trial.trial_id] = {
                "trial_id": trial.trial_id,
                "config": self._config(trial),
                "status": "pending",
                "stop_reason": None,
                "epochs": 0,
                "seconds": 0.0,
                "history": [],
                "checkpoint": None,
                "restarts": 0,
                "exploits": [],  # PBT: epochs at which this trial continued from a better trial
            }
        return self.trials[trial.trial_id]

    def _best_epoch(self, record: dict) -> dict | None:
        scored = [h for h in record["history"] if self.metric in h]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda h: h[self.metric])

    def summary(self, status: str = "running") -> dict:
        trials = list(self.trials.values())
        for record in trials:
            record["best"] = self._best_epoch(record)
        ranked = [t for t in trials if t["best"]]
        sign = -1 if self.mode == "max" else 1
        ranked.sort(key=lambda t: sign * t["best"][self.metric])
        states = {}
        for t in trials:
            states[t["status"]] = states.get(t["status"], 0) + 1
        return {
            "sweep": self.spec.name,
            "status": status,
            "objective": {"metric": self.metric, "mode": self.mode},
            "max_epochs": max_epochs(self.spec),
            "num_trials": num_trials(self.spec),
            "trial_states": states,
            "started_at": self.started_at,
            "updated_at": _now(),
            "driver_attempt": self.attempt,
            "wall_seconds": round(self.seconds_before + time.time() - self.started, 2),
            "best_trial": ranked[0]["trial_id"] if ranked else None,
            "best": _best_entry(ranked[0]) if ranked else None,
            "trials": trials,
        }

    def _update(self, trials, force: bool = False) -> None:
        for trial in trials:
            self._trial(trial)
        now = time.time()
        if force or now - self.last_write > 2.0:  # bounded I/O on chatty sweeps
            summary = self.summary()
            self.say(progress_line(summary))
            self._write(summary)
            self.last_write = now

    def _write(self, summary: dict) -> None:
        if self.lock is not None and self.lock.lost:
            return  # another driver attempt owns the sweep now: its summary wins
        try:
            storage.write_json_atomic(self.summary_uri, summary)
            storage.write_text_atomic(self.log_uri, "\n".join(self.log_lines[-5000:]) + "\n")
        except storage.StorageError as err:
            # Storage down: Tune keeps training and checkpoints retry on their own; the next
            # write carries everything (the summary is rebuilt in memory each time).
            self.echo(f"warning: could not write the summary ({err}); retrying at the next update")

    def finish(self, results) -> dict:
        """Fill in each trial's best retained checkpoint from the result grid; final write."""
        for result in results:
            trial_id = (result.metrics or {}).get("trial_id")
            record = self.trials.get(trial_id)
            if record is None:
                continue
            best = _best_retained_checkpoint(result, self.metric, self.mode)
            if best:
                record["checkpoint"] = self._uri(best)
        summary = self.summary(status="finished")
        for _ in range(30):  # the final summary must land: retry through a storage outage
            try:
                storage.write_json_atomic(self.summary_uri, summary)
                break
            except storage.StorageError as err:
                self.echo(f"warning: could not write the final summary ({err}); retrying in 10 s")
                time.sleep(10)
        self._write(summary)
        return summary


def _best_retained_checkpoint(result, metric: str, mode: str) -> str | None:
    pairs = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if pairs:
        pick = max if mode == "max" else min
        return pick(pairs, key=lambda cm: cm[1][metric])[0].path
    return result.checkpoint.path if result.checkpoint else (result.metrics or {}).get("checkpoint_path")


def _best_entry(record: dict) -> dict:
    return {
        "trial_id": record["trial_id"],
        "config": record["config"],
        "metrics": record["best"],
        "checkpoint": record["checkpoint"],
    }


def _first_line(error) -> str:
    text = str(error or "error").strip().splitlines()
    return text[-1][:300] if text else "error"


def progress_line(summary: dict) -> str:
    states = summary["trial_states"]
    order = ("pending", "running", "terminated", "stopped_early", "error")
    counts = ", ".join(f"{states[s]} {s.replace('_', ' ')}" for s in order if states.get(s))
    best = summary["best"]
    metric = summary["objective"]["metric"]
    best_text = (
        f"best {metric} {best['metrics'][metric]:.4f} (trial {best['trial_id']}, epoch {best['metrics']['epoch']})"
        if best
        else "no result yet"
    )
    elapsed = int(summary["wall_seconds"])
    return f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {summary['num_trials']} trials: {counts} | {best_text}"


def leaderboard(summary: dict, top: int = 5) -> str:
    """The top trials as a text table: params, best-epoch metrics, epochs run, seconds."""
    metric, mode = summary["objective"]["metric"], summary["objective"]["mode"]
    ranked = [t for t in summary["trials"] if t.get("best")]
    ranked.sort(key=lambda t: t["best"][metric], reverse=mode == "max")
    params = list(ranked[0]["config"]) if ranked else []
    header = ["#", "trial"] + [p.split(".")[-1] for p in params] + [
        "val_acc", "val_loss", "train_acc", "train_loss", "epochs", "seconds", "status",
    ]
    rows = []
    for i, t in enumerate(ranked[:top], 1):
        b = t["best"]
        rows.append(
            [str(i), t["trial_id"]]
            + [_fmt(t["config"].get(p)) for p in params]
            + [_fmt(b.get(k)) for k in ("val_acc", "val_loss", "train_acc", "train_loss")]
            + [f"{b['epoch']}/{t['epochs']}", f"{t['seconds']:.1f}", t["status"]]
        )
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    title = f"Top {min(top, len(ranked))} of {len(summary['trials'])} trials by {metric} (epoch = best/run)"
    return "\n".join([title, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _fmt(value) -> str:
    if isinstance(value, dict) and "name" in value:  # a whole model from a grid over models
        return value["name"] + "(" + ", ".join(f"{k}={v}" for k, v in value.items() if k != "name") + ")"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)
