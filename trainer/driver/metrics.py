"""Prometheus metrics of a running sweep, served by the sweep driver (http://HOST:PORT/metrics).

Three parts, each usable alone:

- ``SweepMetrics``: the metrics of one sweep in their OWN ``CollectorRegistry`` (never the global
  one: a process may run several sweeps, and the service keeps its request metrics in a registry of
  its own), updated by explicit event methods (``trial_started``, ``trial_result``, ...). No Ray.
- ``SweepExporter``: what ``run_sweep`` starts when ``spec.metrics.port != 0``: the metrics, an
  HTTP server on the port, and scrape targets for a local Prometheus (below). The driver's one
  Tune callback (trainer/driver/events.py) classifies Tune's events and calls the event methods.

Every series carries a ``sweep`` label; per-trial series also carry ``trial`` (the Tune trial id).
Names follow Prometheus conventions (base units, ``_seconds``, ``_bytes``, ``_total`` for counters,
``_ratio`` for 0..1 fractions). The full list is in ``METRICS`` below and in the README.

Cardinality: per-trial series exist for every trial that started and has not finished (running,
paused, waiting to restart), plus the ``keep_finished`` (default 10) best finished trials by
objective; a finished trial that falls out of that set has all its per-trial series removed. So a
sweep exposes at most (trials in progress + keep_finished) trial label values, whatever its total
number of trials — and the trials in progress are bounded by what the cluster runs at once.
Grafana still draws the removed trials' history (Prometheus keeps what it scraped).
``sweep_trial_last_progress_timestamp_seconds`` (what the stalled-trial alert watches) exists only
for running trials.

Trial info: ``sweep_trial_info{sweep, trial, config, <hyperparameter>...}`` (always 1) says what a
trial is, for dashboard legends: ``sweep_trial_objective * on(sweep, trial, instance)
group_left(config) sweep_trial_info`` gives each curve a ``config`` label, e.g. ``lr=0.001 filters=32`` (Grafana:
``{{trial}} {{config}}``). Its labels are bounded: ``config`` holds every searched or mutated value
under its shortest unambiguous name (``train.optimizer.lr`` → ``lr``), at most CONFIG_MAX characters;
besides it, one label per searched hyperparameter, named after its dotted path (``train_optimizer_lr``),
for the first MAX_CONFIG_LABELS of them (the label set is fixed when the exporter is built, from the
spec); every value is formatted compactly (``0.001``, ``1e-6``, ``[32,64]``) and cut at
CONFIG_VALUE_MAX characters. It is a per-trial series like the others: set when the trial starts
(again after a PBT exploit changes its config: the old label values go), kept while the trial's
other series are, removed with them.

Local Prometheus: the exporter also writes Prometheus file-based service discovery files,
``<dir>/<sweep>.driver.json`` (this exporter) and ``<dir>/<sweep>.ray.json`` (the Ray nodes'
metrics agents, labelled with the sweep), dir = $SWEEP_PROMETHEUS_TARGETS or
/tmp/sweep-service/targets (empty: off). deploy/prometheus/prometheus.yml reads them, so
``make prometheus`` finds every local sweep on whatever port it uses. They are removed when the
sweep ends (or the driver exits through an exception); a driver that is killed or hangs leaves
them behind, and the SweepDown alert fires.

Resume: a driver continuing a sweep hands ``trial_restored`` each trial the record holds already
(earlier attempts', a warm start's copies), so trials by state and the best cover the whole sweep;
counters count this driver's events only (a new process starts them at 0, as Prometheus expects).

PBT: ``SweepMetrics.pbt_exploit(trial_id)`` counts a trial taking over a better trial's
checkpoint (with a perturbed config). The driver's callback calls it when a result says the trial
was ``restored_from`` another trial's checkpoint (trainer/loop.py reports that on the first epoch
after a restore; the record's ``exploits`` come from the same event). Anything else that moves weights
between trials can call it directly: ``exporter.metrics.pbt_exploit(trial_id)``.
"""

from __future__ import annotations

import atexit
import logging
import math
import numbers
import os
import re
import statistics
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app

log = logging.getLogger(__name__)

STATES = ("pending", "running", "paused", "terminated", "stopped_early", "error", "rejected")
FINISHED = ("terminated", "stopped_early", "error", "rejected")
KEEP_FINISHED = 10  # finished trials whose per-trial series stay exposed (the best ones)
EPOCH_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)  # seconds
CHECKPOINT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60)
ADDR_ENV = "SWEEP_METRICS_ADDR"  # interface the exporter binds; default all (a pod must be reachable)
TARGETS_ENV = "SWEEP_PROMETHEUS_TARGETS"
DEFAULT_TARGETS_DIR = "/tmp/sweep-service/targets"
FINAL_SCRAPE_WAIT_MAX = 30.0  # seconds the driver waits, at the end, for Prometheus to scrape the final state
MAX_CONFIG_LABELS = 8  # sweep_trial_info: labels of their own for at most this many hyperparameters
CONFIG_VALUE_MAX = 40  # characters of one hyperparameter's value (labels and the config string)
CONFIG_MAX = 120  # characters of sweep_trial_info's config label
_RESERVED_LABELS = frozenset({"sweep", "trial", "config", "job", "instance", "le", "quantile"})

# name: (type, labels beyond `sweep`, help). The README's table is this list.
METRICS = {
    "sweep_up": ("gauge", (), "1 while the sweep driver runs the sweep, 0 once it has finished"),
    "sweep_start_time_seconds": ("gauge", (), "Unix time the sweep started"),
    "sweep_info": ("gauge", ("objective", "mode", "scheduler"), "Always 1: what the sweep optimizes"),
    "sweep_trials_planned": ("gauge", (), "Trials the spec asks for (grid points x num_samples)"),
    "sweep_trials": ("gauge", ("state",), "Trials by state: " + ", ".join(STATES)),
    "sweep_best_objective": ("gauge", (), "Best objective value any trial reported so far, of the epochs that keep the constraints"),
    "sweep_best_trial_info": ("gauge", ("trial",), "Always 1, for the trial holding the best objective"),
    "sweep_trial_info": (
        "gauge", ("trial", "config"),
        "Always 1, per trial with per-trial series: its hyperparameters, as a compact config string and one "
        "label per searched hyperparameter (at most 8), for legends"),
    "sweep_trial_objective": ("gauge", ("trial",), "Latest objective value of a trial (its learning curve)"),
    "sweep_trial_loss": ("gauge", ("trial", "split"), "Latest mean cross-entropy loss (split: train or val)"),
    "sweep_trial_accuracy_ratio": ("gauge", ("trial", "split"), "Latest accuracy, 0..1 (split: train or val)"),
    "sweep_trial_learning_rate": ("gauge", ("trial",), "Learning rate of a trial's next epoch"),
    "sweep_trial_epochs_completed": ("gauge", ("trial",), "Epochs a trial has completed"),
    "sweep_trial_samples_per_second": ("gauge", ("trial",), "Training throughput of a trial's latest epoch"),
    "sweep_trial_gpu_peak_bytes": (
        "gauge", ("trial",), "Most GPU memory a trial has held in PyTorch's allocator so far (GPU trials only)"),
    "sweep_trial_last_progress_timestamp_seconds": (
        "gauge", ("trial",), "Unix time a running trial last started or reported an epoch (running trials only)"),
    "sweep_trial_starts_total": (
        "counter", (), "Trial starts, counting restarts after a crash and resumes after a pause"),
    "sweep_trial_errors_total": ("counter", (), "Trials that failed for good (no restarts left)"),
    "sweep_trial_retries_total": ("counter", (), "Trial crashes restarted from their last checkpoint"),
    "sweep_early_stops_total": ("counter", (), "Trials the scheduler stopped before their last epoch"),
    "sweep_pbt_exploits_total": ("counter", (), "PBT exploits: a trial continuing from a better trial's checkpoint"),
    "sweep_epochs_total": ("counter", (), "Epochs completed, all trials together"),
    "sweep_train_samples_total": ("counter", (), "Training samples processed, all trials together"),
    "sweep_epoch_duration_seconds": (
        "histogram", (), "Wall time of one epoch: training and validation (checkpoint writes are timed apart)"),
    "sweep_checkpoint_write_duration_seconds": ("histogram", (), "Time to serialize and write one checkpoint"),
    "sweep_checkpoint_write_bytes_total": ("counter", (), "Bytes of checkpoints written"),
}
_TYPES = {"gauge": Gauge, "counter": Counter, "histogram": Histogram}
_BUCKETS = {
    "sweep_epoch_duration_seconds": EPOCH_BUCKETS,
    "sweep_checkpoint_write_duration_seconds": CHECKPOINT_BUCKETS,
}
# Series kept per trial (the cardinality policy applies to these); sweep_best_trial_info is one series.
PER_TRIAL = tuple(name for name, (_, labels, _) in METRICS.items() if "trial" in labels and name != "sweep_best_trial_info")


def compact_value(value) -> str:
    """A hyperparameter value, short: ``0.001``, ``1e-6``, ``32``, ``true``, ``[32,64]``, ``adam``;
    at most CONFIG_VALUE_MAX characters."""
    def fmt(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, numbers.Integral):
            return str(int(v))
        if isinstance(v, numbers.Real):
            text = format(float(v), ".4g")
            if "e" in text:  # 1e-06 -> 1e-6, 1e+10 -> 1e10
                mantissa, exponent = text.split("e")
                text = f"{mantissa}e{int(exponent)}"
            return text
        if v is None:
            return "none"
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(fmt(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ",".join(f"{k}:{fmt(x)}" for k, x in v.items()) + "}"
        return " ".join(str(v).split())  # no newlines or runs of blanks in a label

    text = fmt(value)
    return text if len(text) <= CONFIG_VALUE_MAX else text[:CONFIG_VALUE_MAX - 1] + "…"


def config_label_name(key: str) -> str:
    """A dotted hyperparameter path as a Prometheus label name: ``train.optimizer.lr`` → ``train_optimizer_lr``."""
    name = re.sub(r"[^a-zA-Z0-9_]", "_", key).lstrip("_") or "param"
    if name[0].isdigit() or name in _RESERVED_LABELS:
        name = f"param_{name}"
    return name


def short_names(keys) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key ends with: lr, optimizer.lr, ..."""
    keys = list(dict.fromkeys(keys))
    parts = {k: k.split(".") for k in keys}
    out = {}
    for key in keys:
        for n in range(1, len(parts[key]) + 1):
            suffix = parts[key][-n:]
            if not any(other != key and parts[other][-n:] == suffix for other in keys):
                break
        out[key] = ".".join(suffix)
    return out


class _Trial:
    __slots__ = ("state", "epochs", "best", "finished_order", "series", "config", "info")

    def __init__(self):
        self.state = "pending"
        self.epochs = 0
        self.best: float | None = None  # best objective this trial reported
        self.finished_order = 0
        self.series: set[tuple[str, tuple[str, ...]]] = set()  # (metric, label values) exposed
        self.config: dict = {}  # the searched and mutated values, by dotted path (the latest start's)
        self.info: tuple[str, ...] | None = None  # label values of its sweep_trial_info series


class SweepMetrics:
    """The metrics of one sweep, in ``self.registry``. Call the event methods as things happen."""

    def __init__(
        self,
        sweep: str,
        *,
        objective: str = "val_acc",
        mode: str = "max",
        planned_trials: int | None = None,
        scheduler: str = "fifo",
        keep_finished: int = KEEP_FINISHED,
        registry: CollectorRegistry | None = None,
        config_keys=(),
        constraints=(),
    ):
        """``config_keys``: the sweep's searched (and mutated) hyperparameters, by dotted path: the
        first MAX_CONFIG_LABELS get labels of their own on ``sweep_trial_info``. ``constraints``:
        the spec's, parsed (service/core/record.py ``Constraint``): an epoch breaking one is never
        the best objective (its trial's own series still show it)."""
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if keep_finished < 0:
            raise ValueError(f"keep_finished must be >= 0, got {keep_finished}")
        self.sweep, self.objective, self.mode = sweep, objective, mode
        self.keep_finished = keep_finished
        self.constraints = list(constraints)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.config_keys = list(dict.fromkeys(config_keys))
        self.config_labels: dict[str, str] = {}  # dotted key -> label name, the first MAX_CONFIG_LABELS
        for key in self.config_keys:
            name = config_label_name(key)
            if len(self.config_labels) < MAX_CONFIG_LABELS and name not in self.config_labels.values():
                self.config_labels[key] = name
        self._m = {}
        for name, (kind, labels, doc) in METRICS.items():
            if name == "sweep_trial_info":
                labels = (*labels, *self.config_labels.values())
            kwargs = {"buckets": _BUCKETS[name]} if kind == "histogram" else {}
            # prometheus_client appends _total to counters itself
            metric_name = name.removesuffix("_total") if kind == "counter" else name
            self._m[name] = _TYPES[kind](metric_name, doc, ("sweep", *labels), registry=self.registry, **kwargs)
        self._trials: dict[str, _Trial] = {}
        self._counts = dict.fromkeys(STATES, 0)  # trials by state, kept as states change (O(1) per event)
        self._exposed_finished: set[str] = set()  # finished trials that still have per-trial series
        self._finished = 0
        self._best: float | None = None
        self._best_trial: str | None = None

        # Counters and histograms exist from the start, at 0, so rate()/increase() see the first event.
        for name, (kind, labels, _) in METRICS.items():
            if kind != "gauge" and not labels:
                self._m[name].labels(self.sweep)
        self._m["sweep_up"].labels(sweep).set(1)
        self._m["sweep_start_time_seconds"].labels(sweep).set(time.time())
        self._m["sweep_info"].labels(sweep, objective, mode, scheduler).set(1)
        if planned_trials is not None:
            self._m["sweep_trials_planned"].labels(sweep).set(planned_trials)
        self._update_states()

    # ------------------------------------------------------------------------------ events
    def trial_added(self, trial_id: str) -> None:
        """Tune created the trial; it waits for resources (state pending)."""
        if trial_id not in self._trials:
            self._trials[trial_id] = _Trial()
            self._counts["pending"] += 1
            self._update_states()

    def trial_started(self, trial_id: str, config: dict | None = None) -> None:
        """The trial (re)starts; ``config``: its searched and mutated values by dotted path (PBT
        changes them at an exploit, and the trial starts again), for ``sweep_trial_info``."""
        trial = self._trial(trial_id)
        self._set_state(trial_id, "running")
        self._inc("sweep_trial_starts_total")
        if config is not None:
            trial.config = dict(config)
        self._set_info(trial, trial_id)
        self._trial_gauge(trial, "sweep_trial_last_progress_timestamp_seconds", trial_id, time.time())

    def trial_paused(self, trial_id: str) -> None:
        """The scheduler paused the trial (HyperBand, PBT): not running, so not stalled either."""
        self._set_state(trial_id, "paused")
        self._remove(self._trial(trial_id), "sweep_trial_last_progress_timestamp_seconds", (self.sweep, trial_id))

    def trial_result(self, trial_id: str, result: dict) -> None:
        """One epoch's report (trainer/loop.py's metrics dict)."""
        trial = self._trial(trial_id)
        if trial.state != "running":
            self._set_state(trial_id, "running")
        g = lambda name, value, *extra: self._trial_gauge(trial, name, trial_id, value, *extra)  # noqa: E731
        if "epoch" in result:
            trial.epochs = int(result["epoch"])
            g("sweep_trial_epochs_completed", trial.epochs)
        for split in ("train", "val"):
            if f"{split}_loss" in result:
                g("sweep_trial_loss", result[f"{split}_loss"], split)
            if f"{split}_acc" in result:
                g("sweep_trial_accuracy_ratio", result[f"{split}_acc"], split)
        if "lr" in result:
            g("sweep_trial_learning_rate", result["lr"])
        if "samples_per_second" in result:
            g("sweep_trial_samples_per_second", result["samples_per_second"])
        if result.get("gpu_peak_bytes") is not None:
            g("sweep_trial_gpu_peak_bytes", result["gpu_peak_bytes"])
        g("sweep_trial_last_progress_timestamp_seconds", time.time())
        self._inc("sweep_epochs_total")
        if "train_samples" in result:
            self._inc("sweep_train_samples_total", result["train_samples"])
        if "epoch_seconds" in result:
            self._m["sweep_epoch_duration_seconds"].labels(self.sweep).observe(result["epoch_seconds"])
        if "checkpoint_seconds" in result:
            self._m["sweep_checkpoint_write_duration_seconds"].labels(self.sweep).observe(result["checkpoint_seconds"])
        if "checkpoint_bytes" in result:
            self._inc("sweep_checkpoint_write_bytes_total", result["checkpoint_bytes"])

        value = result.get(self.objective)
        if value is None:
            return
        g("sweep_trial_objective", value)
        if self._feasible(result):
            self._observe_objective(trial, trial_id, value)

    def trial_restored(self, trial_id: str, state: str, *, results=(), config: dict | None = None) -> None:
        """A trial this driver did not run: recorded by an earlier attempt of the sweep (a resume)
        or copied from an earlier sweep (a warm start). It counts in its state and its epochs'
        ``results`` (the record's, in order) in the sweep's best, as if this driver had seen them;
        a finished one keeps its final per-trial series like any finished trial. The counters
        (epochs, starts, errors, samples) count what this driver did and are not replayed. An
        unfinished one counts as pending: Tune restarts it."""
        if trial_id in self._trials:
            return
        self.trial_added(trial_id)
        trial = self._trials[trial_id]
        trial.config = dict(config or {})
        for result in results:
            trial.epochs = int(result.get("epoch") or trial.epochs)
            if self._feasible(result):
                self._observe_objective(trial, trial_id, result.get(self.objective))
        if state in FINISHED:
            if results:
                self._trial_gauge(trial, "sweep_trial_epochs_completed", trial_id, trial.epochs)
                if results[-1].get(self.objective) is not None:
                    self._trial_gauge(trial, "sweep_trial_objective", trial_id, results[-1][self.objective])
            self._finish(trial_id, state)

    def trial_completed(self, trial_id: str, stopped_early: bool) -> None:
        """The trial ended without error: all its epochs, or ``stopped_early`` by the scheduler."""
        if stopped_early:
            self._inc("sweep_early_stops_total")
        self._finish(trial_id, "stopped_early" if stopped_early else "terminated")

    def trial_errored(self, trial_id: str) -> None:
        """The trial failed for good (its restarts, if any, are used up)."""
        self._inc("sweep_trial_errors_total")
        self._finish(trial_id, "error")

    def trial_rejected(self, trial_id: str) -> None:
        """The trial was refused before training: its config breaks a constraint (no failure)."""
        self._finish(trial_id, "rejected")

    def trial_restarted(self, trial_id: str) -> None:
        """The trial crashed and will restart from its last checkpoint (pending until it does)."""
        self._inc("sweep_trial_retries_total")
        self._set_state(trial_id, "pending")
        self._remove(self._trial(trial_id), "sweep_trial_last_progress_timestamp_seconds", (self.sweep, trial_id))

    def pbt_exploit(self, trial_id: str) -> None:
        """PBT replaced this trial's weights and config with a better trial's (perturbed)."""
        self._trial(trial_id)
        self._inc("sweep_pbt_exploits_total")

    def finish(self) -> None:
        """The sweep is over (finished, failed or interrupted): up goes to 0."""
        self._m["sweep_up"].labels(self.sweep).set(0)

    # ------------------------------------------------------------------------------ reading
    def epochs(self, trial_id: str) -> int:
        """Epochs the trial reported (its latest epoch number)."""
        trial = self._trials.get(trial_id)
        return trial.epochs if trial else 0

    def state(self, trial_id: str) -> str | None:
        trial = self._trials.get(trial_id)
        return trial.state if trial else None

    def exposed_trials(self) -> set[str]:
        """Trial ids that currently have per-trial series."""
        return {t for t, trial in self._trials.items() if trial.series}

    def exposition(self) -> bytes:
        """The text format, as served on /metrics."""
        return generate_latest(self.registry)

    # ------------------------------------------------------------------------------ internals
    def _trial(self, trial_id: str) -> _Trial:
        self.trial_added(trial_id)
        return self._trials[trial_id]

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def _feasible(self, result: dict) -> bool:
        """Whether an epoch keeps every constraint: only such an epoch can be the best (as in the record)."""
        return all(c.violation(result.get(c.metric)) is None for c in self.constraints)

    def _observe_objective(self, trial: _Trial, trial_id: str, value) -> None:
        """The trial's and the sweep's best objective so far, of the epochs that keep the constraints."""
        if not isinstance(value, (int, float)) or math.isnan(value):
            return
        if trial.best is None or self._better(value, trial.best):
            trial.best = value
        if self._best is None or self._better(value, self._best):
            self._best = value
            self._m["sweep_best_objective"].labels(self.sweep).set(value)
            if self._best_trial != trial_id:
                if self._best_trial is not None:
                    self._m["sweep_best_trial_info"].remove(self.sweep, self._best_trial)
                self._m["sweep_best_trial_info"].labels(self.sweep, trial_id).set(1)
                self._best_trial = trial_id

    def _inc(self, name: str, amount: float = 1) -> None:
        self._m[name].labels(self.sweep).inc(amount)

    def _set_state(self, trial_id: str, state: str) -> None:
        trial = self._trial(trial_id)
        self._counts[trial.state] -= 1
        self._counts[state] += 1
        trial.state = state
        if state not in FINISHED:
            self._exposed_finished.discard(trial_id)
        self._update_states()

    def _update_states(self) -> None:
        for state, count in self._counts.items():
            self._m["sweep_trials"].labels(self.sweep, state).set(count)

    def _trial_gauge(self, trial: _Trial, name: str, trial_id: str, value, *extra: str) -> None:
        if trial.info is None:  # every exposed trial has its info series: dashboard joins never drop one
            self._set_info(trial, trial_id)
        labels = (self.sweep, trial_id, *extra)
        self._m[name].labels(*labels).set(value)
        trial.series.add((name, labels))

    def info_labels(self, config: dict) -> dict[str, str]:
        """sweep_trial_info's labels beyond sweep and trial, for a trial's config."""
        names = short_names([*self.config_keys, *config])
        items = " ".join(f"{names[k]}={compact_value(v)}" for k, v in config.items())
        labels = {"config": items if len(items) <= CONFIG_MAX else items[:CONFIG_MAX - 1] + "…"}
        for key, name in self.config_labels.items():
            labels[name] = compact_value(config[key]) if key in config else ""
        return labels

    def _set_info(self, trial: _Trial, trial_id: str) -> None:
        values = (self.sweep, trial_id, *self.info_labels(trial.config).values())
        if values == trial.info:
            return
        if trial.info is not None:
            self._remove(trial, "sweep_trial_info", trial.info)
        trial.info = values
        self._m["sweep_trial_info"].labels(*values).set(1)
        trial.series.add(("sweep_trial_info", values))

    def _remove(self, trial: _Trial, name: str, labels: tuple[str, ...]) -> None:
        if (name, labels) in trial.series:
            self._m[name].remove(*labels)
            trial.series.discard((name, labels))
            if name == "sweep_trial_info":
                trial.info = None

    def _finish(self, trial_id: str, state: str) -> None:
        trial = self._trial(trial_id)
        self._set_state(trial_id, state)
        self._finished += 1
        trial.finished_order = self._finished
        self._remove(trial, "sweep_trial_last_progress_timestamp_seconds", (self.sweep, trial_id))
        self._exposed_finished.add(trial_id)
        self._evict()

    def _evict(self) -> None:
        """Keep the per-trial series of the ``keep_finished`` best finished trials; drop the rest
        (at most keep_finished + 1 trials to look at: the cost does not grow with the sweep)."""
        self._exposed_finished = {t for t in self._exposed_finished if self._trials[t].series}
        finished = [self._trials[t] for t in self._exposed_finished]
        if len(finished) <= self.keep_finished:
            return
        sign = 1 if self.mode == "max" else -1
        # best first; trials without an objective last; among equals the most recently finished first
        finished.sort(key=lambda t: (t.best is not None, sign * t.best if t.best is not None else 0, t.finished_order),
                      reverse=True)
        for trial in finished[self.keep_finished:]:
            for name, labels in list(trial.series):
                self._remove(trial, name, labels)


# ---------------------------------------------------------------------------------- HTTP server
class MetricsPortInUse(OSError):
    pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - one line per scrape would flood the terminal
        pass


class MetricsServer:
    """Serves a registry on http://ADDR:PORT/metrics in a daemon thread (port 0: any free port).
    Remembers when it was scraped, so ``stop`` can wait for one scrape of the final state."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str = "0.0.0.0"):
        app = make_wsgi_app(registry)
        self._scrapes: list[float] = []
        self._final_scrape = threading.Event()
        self._finished_at: float | None = None

        def recording_app(environ, start_response):
            now = time.monotonic()
            self._scrapes = (self._scrapes + [now])[-5:]
            response = app(environ, start_response)
            if self._finished_at is not None and now > self._finished_at:
                self._final_scrape.set()
            return response

        try:
            self._httpd = make_server(addr, port, recording_app, _ThreadingWSGIServer, handler_class=_QuietHandler)
        except OSError as err:
            raise MetricsPortInUse(
                f"metrics port {port} on {addr} is not available ({err.strerror}): another sweep's exporter? "
                "Pass --metrics-port with a free port, or --metrics-port 0 to turn the exporter off"
            ) from err
        self.addr, self.port = addr, self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="sweep-metrics", daemon=True)
        self._thread.start()

    def final_scrape_wait(self) -> float:
        """Seconds to wait for a scrape after the end: 0 unless scraped at least twice, else 1.5
        scrape intervals (as observed), at most FINAL_SCRAPE_WAIT_MAX."""
        times = self._scrapes
        if len(times) < 2:  # not scraped (or once: no interval to go by, and a sweep that short is rare)
            return 0.0
        interval = statistics.median(b - a for a, b in zip(times, times[1:]))
        return min(FINAL_SCRAPE_WAIT_MAX, max(1.0, 1.5 * interval))

    def stop(self, wait_for_final_scrape: bool = True) -> None:
        if wait_for_final_scrape:
            self._finished_at = time.monotonic()
            self._final_scrape.wait(self.final_scrape_wait())
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------------- scrape targets
class ScrapeTargets:
    """Prometheus file_sd files for a local Prometheus: <dir>/<sweep>.driver.json, <sweep>.ray.json."""

    def __init__(self, sweep: str, directory: str | os.PathLike | None = None):
        if directory is None:
            directory = os.environ.get(TARGETS_ENV, DEFAULT_TARGETS_DIR)
        self.directory = Path(directory) if str(directory) else None  # "": off
        self.sweep = sweep
        self.written: list[Path] = []

    def write(self, kind: str, addresses: list[str]) -> Path | None:
        if self.directory is None or not addresses:
            return None
        from service.core.storage import write_json_atomic

        path = self.directory / f"{self.sweep}.{kind}.json"
        try:
            write_json_atomic(path, [{"targets": addresses, "labels": {"sweep": self.sweep}}])
        except OSError as err:  # a local convenience: never worth failing the sweep for
            log.warning("cannot write Prometheus scrape targets to %s (%s): a local Prometheus will not find "
                        "this sweep; set %s to a writable directory", path, err, TARGETS_ENV)
            return None
        if path not in self.written:
            if not self.written:
                atexit.register(self.remove)  # also when the driver exits through an exception
            self.written.append(path)
        return path

    def write_ray_nodes(self) -> Path | None:
        """Every alive Ray node's metrics agent (HOST:MetricsExportPort); this machine's as 127.0.0.1."""
        import ray

        if not ray.is_initialized():
            return None
        here = ray.util.get_node_ip_address()
        addresses = [
            f"{'127.0.0.1' if n['NodeManagerAddress'] == here else n['NodeManagerAddress']}:{n['MetricsExportPort']}"
            for n in ray.nodes()
            if n.get("Alive") and n.get("MetricsExportPort")
        ]
        return self.write("ray", sorted(addresses))

    def remove(self) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written.clear()


# ---------------------------------------------------------------------------------- the exporter
class SweepExporter:
    """Metrics + HTTP server + Tune callback + local scrape targets for one sweep.
    Binds the port in the constructor, so a busy port fails before anything else happens."""

    def __init__(self, spec, *, addr: str | None = None, targets_dir=None, keep_finished: int = KEEP_FINISHED):
        from service.core.spec import config_keys, num_trials, parse_constraint

        self.metrics = SweepMetrics(
            spec.name,
            objective=spec.objective.metric,
            mode=spec.objective.mode,
            planned_trials=num_trials(spec),
            scheduler=spec.scheduler.name,
            keep_finished=keep_finished,
            config_keys=[*config_keys(spec), *spec.scheduler.mutated()],  # what a trial's config holds
            constraints=[parse_constraint(c) for c in spec.constraints],
        )
        addr = addr or os.environ.get(ADDR_ENV, "0.0.0.0")
        self.server = MetricsServer(self.metrics.registry, spec.metrics.port, addr)
        self.targets = ScrapeTargets(spec.name, targets_dir)
        local = "127.0.0.1" if self.server.addr in ("", "0.0.0.0", "::") else self.server.addr
        self.targets.write("driver", [f"{local}:{self.server.port}"])

    def on_setup(self) -> None:
        """Ray is up: scrape targets for its nodes' metrics agents."""
        try:
            self.targets.write_ray_nodes()
        except Exception as err:  # metrics must not kill the sweep; say what is missing
            log.warning("Prometheus scrape targets for Ray's nodes not written: %s", err)

    def stop(self, wait_for_final_scrape: bool = True) -> None:
        """up → 0, let Prometheus scrape that (see MetricsServer.stop), stop serving, drop the targets."""
        self.metrics.finish()
        try:
            self.server.stop(wait_for_final_scrape)
        finally:
            self.targets.remove()


def start_exporter(spec) -> SweepExporter | None:
    """The exporter for ``spec`` (serving already), or None when ``spec.metrics.port`` is 0."""
    return SweepExporter(spec) if spec.metrics.port else None
