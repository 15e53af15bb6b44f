"""The sweep driver: SweepSpec → Ray Tune run → the sweep record, with a live progress line.

    index = run_sweep(spec)

What lands where in storage is service/core/record.py's (the layout's one owner); the driver
writes the record as trials report (trainer/driver/events.py), so a crash never hides what had
finished. One driver per sweep: ``DriverLock``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable

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
# SIGINT is the driver's (StopRequest below): it stops the trials the way Tune's handler does,
# and also on SIGTERM, and records the interrupt.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")

from service.core import storage  # noqa: E402
from service.core.errors import SweepStopped, UserError  # noqa: E402
from service.core.record import (  # noqa: E402
    Objective, RecordWriter, SegmentedLog, SweepIndex, SweepStore, TrialRecord, new_index,
)
from service.core.spec import SweepSpec, max_epochs, num_trials, parse_constraint  # noqa: E402
from trainer.driver import space  # noqa: E402
from trainer.driver.lock import DriverLock  # noqa: E402

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
    error before anything starts.

    Raises ``SweepBusy`` (before writing anything) when another driver is running this sweep, and
    ``SweepStopped`` when the sweep stopped before it finished (SIGINT/SIGTERM, storage full, this
    driver fenced out by a newer attempt): the record then says so, except when fenced out (the
    record is the new owner's)."""
    import ray
    from ray import tune

    from trainer.driver import retries
    from trainer.driver.metrics import start_exporter
    from trainer.trainable import tune_trial  # no torch in the driver

    retries.install()  # an error no restart can fix fails its trial at once, not max_failures times
    store = SweepStore(spec.storage.uri, spec.name)
    sweep_uri = store.uri
    fs, storage_path = storage.pyarrow_filesystem(spec.storage.uri)
    # A resume's searcher is restored with what it was told; a fresh run reads the earlier sweeps
    # (WarmStartError, before anything is written, when one is missing or answers another question).
    evaluated = [] if resume else warm_start_trials(spec, echo)
    stop = StopRequest(spec, echo)
    with stop.catching_signals(), stop.before_the_sweep_starts():
        if not ray.is_initialized():
            # Trial stdout stays in the trial logs; errors reach the terminal as one line each
            # (trainer/driver/events.py), their tracebacks the trial's log in storage (sweepctl logs --trial).
            # Nothing is forwarded through a runtime env: Ray logs a job's runtime env in plain text
            # (runtime_env_agent.log, 0644) and shows it on the dashboard, so credentials never go
            # there. A Ray we start here (address="local": never a stray `ray start` instance found
            # on this host) runs its raylet as our child with a copy of os.environ, and the raylet
            # starts every worker with its own environment: the workers get the S3 endpoint, the
            # credentials and SWEEP_* as this process has them now (tests/e2e/test_secrets.py checks
            # that the secret reaches no file of Ray's session and no object in storage). On a
            # cluster (RAY_ADDRESS, e.g. a RayJob) every pod has them from the Secret already. Tune
            # itself would copy the driver's AWS_ACCESS_KEY_ID/SECRET_ACCESS_KEY/SESSION_TOKEN into
            # every trial actor's runtime env (ray/tune/execution/class_cache.py): not with ours.
            joining = bool(os.environ.get("RAY_ADDRESS"))
            ray.init(address=None if joining else "local", include_dashboard=False,
                     logging_level="WARNING", log_to_driver=False)
            from ray.tune.execution import class_cache

            class_cache.ENV_VARS_TO_PROPAGATE.difference_update(
                {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})
            stop.install()  # ray.init replaced our SIGTERM handler with its own (sys.exit)
        if not wait_for_resources:
            check_trial_fits(spec, ray.cluster_resources())

        lock = DriverLock(store, on_lost=stop.fence)
        lock.check()  # another live driver: say so (before the exporter finds its port taken)
        # Prometheus exporter (spec.metrics.port; 0: none). A busy port fails before anything is written.
        exporter = start_exporter(spec)
        try:
            lock.acquire()  # refuses (SweepBusy) before anything is written when another driver is alive
        except BaseException:
            if exporter:
                exporter.stop()
            raise
        stop.attempt = lock.attempt
        events = None
        try:
            if resume:  # continuing a cancelled sweep withdraws its cancel
                storage.delete_file(store.cancel_request_uri)
            else:
                storage.write_text_atomic(store.spec_uri, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
            experiment_path = f"{storage_path}/{spec.name}"  # inside `fs` ("bucket/prefix/name" on S3)
            # A driver killed before Tune's first snapshot left nothing to restore (no trial had
            # started yet): the resume starts the sweep's trials afresh, its searcher told a warm
            # start's earlier trials again (and any copy the record lacks added).
            restorable = (tune.Tuner.can_restore(experiment_path, storage_filesystem=fs)
                          and ExperimentState(fs, experiment_path).landed_at() is not None)
            if resume and not restorable:
                evaluated = warm_start_trials(spec, echo)
            events = _events(spec, store, lock, echo, resume=resume, exporter=exporter, metrics=metrics, stop=stop,
                             copied=warm_start_copies(spec, evaluated))
            trainable = tune.with_resources(
                tune.with_parameters(tune_trial, spec_json=spec.model_dump_json()), _trial_resources(spec)
            )
            from ray.tune.logger import JsonLoggerCallback

            all_callbacks = [events, *callbacks, JsonLoggerCallback()]
            if resume and restorable:
                echo(f"resuming sweep {spec.name} (driver attempt {lock.attempt}) from {sweep_uri}")
                # Tune unpickles its state from storage here: tuner.pkl, the trials cloudpickled in
                # experiment_state-*.json, the searcher's state. The storage is trusted as the sweep's
                # own write area (README, "Storage on S3"): whoever can write it can rewrite all of
                # these, and a checkpoint together with its sha256 manifest, so a digest of tuner.pkl
                # alone would prove nothing. What we read back ourselves is JSON, or checkpoints loaded
                # with torch.load(weights_only=True) after their manifest is checked.
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
                        **space.tune_metric(spec),  # none for several objectives: the searcher has them
                        search_alg=space.searcher(spec, max_concurrent=_max_concurrent(spec), evaluated=evaluated),
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
            with _quiet_tune_interrupt_messages():
                tuner.fit()
            stop.tune_running = False
            # Tune's last snapshot is in storage now: what retention held back can go.
            events.apply_pending_retention(snapshot_landed=True)
            if stop.signal is None:
                index = events.finish()
                if spec.report.auto:
                    write_report(spec, lock, events.progress)
                lock.release("finished")
                return index
            raise KeyboardInterrupt  # interrupted: Tune saved its state and stopped the trials
        except BaseException as err:
            stop.tune_running = False
            raise stop.record(err, events, lock) from (None if isinstance(err, (KeyboardInterrupt, SweepStopped)) else err)
        finally:
            if events is not None:
                events.progress.stop_display()  # however the driver ends: the terminal left as a plain one
            if events is not None and not lock.lost:
                events.writer.release_reserve()
            if exporter:
                exporter.stop()  # up → 0, one last scrape if Prometheus is watching, then the port is free


def write_report(spec: SweepSpec, lock: DriverLock, progress) -> None:
    """The finished sweep's report (spec ``report.auto``): report/report.html in its storage, as
    `sweepctl report` writes it, while this driver still holds the lock (fenced out: nothing).

    Best effort: the sweep has finished and its record says so, so an error here, or a signal
    meanwhile, is one warning line (terminal and driver log) and changes neither the record nor
    the exit code; `sweepctl report NAME` writes the report again. Interrupted, cancelled and
    failed sweeps get none: the resumed sweep writes it when it finishes, and a driver told to
    stop stops at once (a pod has 30 s) instead of drawing figures for minutes."""
    try:
        from service.analysis.report import write_sweep_report  # matplotlib, jinja2: once the trials are done

        written = not lock.lost and write_sweep_report(spec.storage.uri, spec.name, fenced=lambda: lock.lost)
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - nothing here may fail the finished sweep
        reason = " ".join(str(err).split())[:300] or "interrupted"
        progress.say(f"warning: the sweep finished but its report was not written ({type(err).__name__}: {reason}); "
                     f"sweepctl report {spec.name} --storage {spec.storage.uri} writes it")
        progress.close()  # the driver log was closed by events.finish(): this flushes the line after it
        return
    if not written:  # said on the terminal only: the driver log is the newer attempt's
        progress.say(f"no report from driver attempt {lock.attempt}: a newer attempt owns sweep {spec.name} now")


class DriverFenced(Exception):
    """Raised in the Tune loop once a newer driver attempt owns the sweep: Tune stops the trials
    without its final snapshot (which would overwrite the new owner's)."""


class StopRequest:
    """Why the driver is stopping early, and the signal handling that asks it to.

    SIGINT and SIGTERM (what Kubernetes sends): the first one ends Tune's loop the way Tune's own
    Ctrl-C does (Tune saves its experiment state, then stops the trials), so ``sweepctl resume``
    continues every unfinished trial from its last checkpoint. A second signal, or one before
    Tune's loop runs, stops at once. Either way the record and driver.json say ``interrupted``,
    and sweepctl exits 130 (SIGINT) or 143 (SIGTERM) with the resume command."""

    GRACE_SECONDS = 30.0  # for Tune to save its state and stop the trials after a signal

    def __init__(self, spec: SweepSpec, echo: Callable[[str], None]):
        self.spec, self.echo = spec, echo
        self.signal: int | None = None
        self.fenced = False
        self.tune_running = False  # set by the Tune callback's setup(): Tune's own handler exists
        self.attempt = 0
        self._previous: dict[int, object] = {}

    # ---------------------------------------------------------------------- signals
    @contextmanager
    def catching_signals(self):
        main = threading.current_thread() is threading.main_thread()
        if main:
            self._previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            self.install()
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        first = self.signal is None
        self.signal = self.signal or signum
        tune_handler = signal.getsignal(signal.SIGUSR1)  # Tune's interrupt (it also registers SIGUSR1)
        if first and self.tune_running and callable(tune_handler):
            self.echo(f"{signal.Signals(signum).name}: stopping the trials and saving the sweep's state "
                      f"(again to stop at once)")
            tune_handler(signum, frame)
            # Should Tune's wind-down hang (e.g. Ray's own processes were signalled too and died
            # under it), the second signal comes by itself: stop at once, and record it.
            watchdog = threading.Timer(self.GRACE_SECONDS, os.kill, (os.getpid(), signum))
            watchdog.daemon = True
            watchdog.start()
        else:
            raise KeyboardInterrupt

    @contextmanager
    def before_the_sweep_starts(self):
        """A signal before the lock is taken (Ray starting): nothing was written, say so."""
        try:
            yield
        except KeyboardInterrupt:
            sig = self.signal or signal.SIGINT
            raise SweepStopped(f"{signal.Signals(sig).name} received before sweep {self.spec.name} started; "
                               f"nothing was written", status="interrupted", exit_code=128 + sig) from None

    # ---------------------------------------------------------------------- the fence
    def fence(self) -> None:
        """Called by the lock's watcher thread when a newer attempt claimed the sweep."""
        self.fenced = True

    def check(self) -> None:
        """In the Tune loop (each step): stop at once when fenced out."""
        if self.fenced:
            raise DriverFenced()

    # ---------------------------------------------------------------------- the record
    def record(self, err: BaseException, events, lock: "DriverLock") -> BaseException:
        """Record how the sweep stopped (one try each: an interrupt must not wait on storage) and
        return what the caller raises: SweepStopped with the message, or the original error."""
        name, uri = self.spec.name, self.spec.storage.uri
        resume = f"sweepctl resume {name} --storage {uri}"
        if self.fenced or isinstance(err, DriverFenced):
            lock.release("fenced")  # writes nothing: the sweep is the newer attempt's
            return SweepStopped(
                f"driver attempt {self.attempt} lost sweep {name} to attempt {self.attempt + 1} (another driver took "
                f"it over, presuming this one dead); it stopped its trials and wrote nothing more",
                status="fenced", exit_code=1)
        if isinstance(err, storage.StorageFull) or (events is not None and events.writer.full is not None):
            full = err if isinstance(err, storage.StorageFull) else events.writer.full
            reason = f"storage full: {full}"
            status, exit_code = "failed", 1
            message = (f"sweep {name} stopped: {full}\n  Finished trials are in the record; after freeing "
                       f"space, {resume} continues the others")
        elif isinstance(err, KeyboardInterrupt) or self.signal is not None:
            sig = self.signal or signal.SIGINT
            cancel = _read_quietly(SweepStore(uri, name).cancel_request_uri)
            if cancel:  # the service asked for it before signalling
                reason = f"cancelled by {cancel.get('by', 'the sweep service')} at {cancel.get('requested_at')}"
                status = "cancelled"
                message = f"sweep {name} {reason}; finished trials are kept.\n  Continue it anyway: {resume}"
            else:
                reason = f"{signal.Signals(sig).name} received"
                status = "interrupted"
                message = f"sweep {name} interrupted ({reason}); finished trials are kept.\n  Continue it: {resume}"
            exit_code = 128 + sig
        else:
            reason = f"{type(err).__name__}: {err}"[:500]
            status, exit_code = "failed", 1
            message = None
        if events is not None:
            events.stopped(status, reason)
        lock.release(status, reason)
        if message is None:
            return err
        return SweepStopped(message, status=status, exit_code=exit_code)


def _read_quietly(uri: str) -> dict | None:
    try:
        return storage.read_json_if_exists(uri)
    except (storage.StorageError, ValueError):
        return None


@contextmanager
def _quiet_tune_interrupt_messages():
    """Tune's own messages on an interrupt say what ours say, but with ``Tuner.restore(...)``
    (not how a sweep continues) and a warning per unfinished trial: held back while Tune runs."""
    noisy = ("Stop signal received", "Experiment has been interrupted", "Training has been interrupted",
             "Trials did not complete")

    class Quiet(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith(noisy)

    tune_log, analysis_log = logging.getLogger("ray.tune.tune"), logging.getLogger("ray.tune.analysis.experiment_analysis")
    quiet, level = Quiet(), analysis_log.level
    tune_log.addFilter(quiet)
    analysis_log.setLevel(logging.ERROR)  # "Failed to fetch metrics" of trials that had no result yet
    try:
        yield
    finally:
        tune_log.removeFilter(quiet)
        analysis_log.setLevel(level)


def warm_start_trials(spec: SweepSpec, echo) -> list:
    """A warm start's earlier evaluated trials (service/core/warm_start.py), each sweep's said in one line."""
    from service.core import warm_start

    evaluated = []
    for earlier in warm_start.load(spec):
        evaluated += earlier.trials
        left_out = f" ({earlier.not_evaluated} not: errors, rejections, unfinished)" if earlier.not_evaluated else ""
        echo(f"warm start: {len(earlier.trials)} evaluated trials of sweep {earlier.name} in {earlier.storage}{left_out}")
    if evaluated and spec.search.algorithm in ("optuna", "hyperopt"):
        from trainer.driver import conditional

        told = conditional.told_count(spec, evaluated)
        outside = f"; {len(evaluated) - told} lie outside this space" if told < len(evaluated) else ""
        echo(f"warm start: the {spec.search.algorithm} searcher is told {told} earlier results{outside}")
    return evaluated


def warm_start_copies(spec: SweepSpec, evaluated: list) -> list[TrialRecord]:
    """grid/random under a warm start: the earlier trials of planned points, as this sweep's records
    (each once; an id already taken gets a suffix)."""
    if not evaluated or spec.search.algorithm not in ("grid", "random"):
        return []
    from service.core.warm_start import copied_record
    from trainer.driver import conditional

    copies, taken = [], set()
    for e in conditional.warm_grid(spec, evaluated)[1]:
        trial_id = e.trial.trial_id
        n = 2
        while trial_id in taken:
            trial_id, n = f"{e.trial.trial_id}-{n}", n + 1
        taken.add(trial_id)
        copies.append(copied_record(e, trial_id))
    return copies


def _events(spec: SweepSpec, store: SweepStore, lock: "DriverLock", echo, *, resume: bool, exporter, metrics,
            stop: StopRequest, copied: list[TrialRecord] = ()):
    """The driver's one Tune callback, with its sinks: the record (continuing the stored one on
    resume: finished trials are not run again and keep what they recorded; a warm start's
    ``copied`` trials written first), the exporter, the progress line (terminal + the driver log
    in storage)."""
    from trainer.driver.events import SweepEvents
    from trainer.driver.progress import Progress, live_progress_wanted

    objective = Objective(metric=spec.objective.metric, mode=spec.objective.mode)
    previous = store.read_index() if resume else None
    index = new_index(spec.name, objective, max_epochs=max_epochs(spec), num_trials=num_trials(spec),
                      attempt=lock.attempt,
                      objectives=[Objective(metric=o.metric, mode=o.mode) for o in spec.objectives or ()],
                      constraints=[parse_constraint(c) for c in spec.constraints])
    if previous is not None:
        index.started_at = previous.started_at
    trials = store.read_trials(previous) if previous is not None else []
    copied = [c for c in copied if c.trial_id not in {t.trial_id for t in trials}]  # a resume's are recorded
    writer = RecordWriter(store, index, [*trials, *copied], fenced=lambda: lock.lost, warn=lambda m: echo(f"warning: {m}"))
    writer.reserve_space()  # freed when the disk fills up, so the record can still say so
    for record in copied:
        writer.rescore(record)  # judged by this spec's objectives and constraints
        writer.changed(record)
    if copied:
        echo(f"warm start: {len(copied)} planned configurations were evaluated before: their trials are copied, not run")
    # On a terminal, a live table of the trials redrawn in place (SWEEP_PLAIN_PROGRESS=1: the plain
    # lines); anywhere else (CI, `kubectl logs`, a pipe) the plain lines. The driver log: plain lines.
    progress = Progress(echo, SegmentedLog(store.driver_log_uri(), attempt=lock.attempt, stream="driver"),
                        fenced=lambda: lock.lost, live=live_progress_wanted(sys.stdout))

    def on_setup() -> None:  # Tune's loop is starting: its interrupt handler exists from here on
        stop.tune_running = True
        if exporter:
            exporter.on_setup()

    fs, storage_path = storage.pyarrow_filesystem(spec.storage.uri)
    return SweepEvents(
        spec, writer, progress, attempt=lock.attempt,
        metrics=metrics if metrics is not None else (exporter.metrics if exporter else None),
        on_setup=on_setup, check_stop=stop.check,
        seconds_before=previous.wall_seconds if previous is not None else 0.0,
        experiment_state=ExperimentState(fs, f"{storage_path}/{spec.name}"),
    )


class ExperimentState:
    """When Tune's experiment snapshot (which trials ended, each one's latest checkpoint: what a
    resume restores) last landed in storage. Retention deletes a checkpoint only once a snapshot
    taken after its trial ended has landed, so no snapshot a resume may read names a deleted one."""

    PATTERN = "experiment_state-"

    def __init__(self, fs, experiment_path: str):
        from pyarrow import fs as pafs

        self.fs, self.path = fs or pafs.LocalFileSystem(), experiment_path  # None: Ray's local default

    def landed_at(self) -> float | None:
        """The newest snapshot's modification time in storage (seconds since the epoch), if any."""
        from pyarrow import fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        except OSError:  # not there yet, or storage unreachable: retention waits
            return None
        times = [i.mtime.timestamp() for i in infos
                 if i.type == pafs.FileType.File and i.base_name.startswith(self.PATTERN) and i.mtime is not None]
        return max(times) if times else None


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
