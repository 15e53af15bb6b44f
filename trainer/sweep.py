"""The sweep driver: SweepSpec → Ray Tune run → summary.json, with a live progress line.

    summary = run_sweep(spec)

Layout: <storage>/<name>/spec.yaml, <storage>/<name>/summary.json and Tune's experiment (trial
dirs with checkpoints) in the same directory. summary.json is rewritten (atomically) as trials
report, so a crash never hides what had finished.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from datetime import datetime, timezone
from typing import Callable

import yaml

# Our monitor prints one progress line; Tune's own tables and its snapshot-frequency warning
# (harmless for short trials) would bury it. Read by Ray at import/run time, so set first.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from ray.tune import Callback  # noqa: E402

from service import space, storage
from service.errors import UserError
from service.spec import SweepSpec, max_epochs, num_trials, search_space

SUMMARY = "summary.json"
SPEC = "spec.yaml"
METRIC_KEYS = (
    "val_acc", "val_loss", "train_acc", "train_loss", "lr", "samples_per_second", "epoch_seconds",
    "resumed_from_epoch", "train_samples", "duplicate_samples", "checkpoint_seconds", "checkpoint_bytes",
)


def run_sweep(
    spec: SweepSpec,
    *,
    echo: Callable[[str], None] = print,
    callbacks: list = (),
    wait_for_resources: bool = False,
) -> dict:
    """Run the whole sweep (Ray in-process unless already connected) and return the summary.
    ``callbacks``: more Tune callbacks, called after our monitor. ``wait_for_resources``: on an
    autoscaling cluster (KubeRay) trials may wait for nodes; otherwise a trial that can never fit
    the cluster is an error before anything starts."""
    import ray
    from ray import tune

    from trainer.loop import tune_trial
    from trainer.metrics import start_exporter

    if not ray.is_initialized():
        # Trial stdout stays in the trial logs; errors reach the terminal through our monitor.
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    if not wait_for_resources:
        check_trial_fits(spec, ray.cluster_resources())

    # Prometheus exporter (spec.metrics.port; 0: none). Before writing: a busy port fails cleanly.
    exporter = start_exporter(spec)
    sweep_dir = storage.sweep_dir(spec.storage.uri, spec.name)
    storage.write_text_atomic(sweep_dir / SPEC, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))

    monitor = SweepMonitor(spec, sweep_dir / SUMMARY, echo)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(tune_trial, spec_json=spec.model_dump_json()), _trial_resources(spec)),
        param_space=space.param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.objective.metric,
            mode=spec.objective.mode,
            search_alg=space.searcher(spec, max_concurrent=_max_concurrent(spec)),
            scheduler=space.scheduler(spec),
            num_samples=spec.search.num_samples,
            # A fresh Python worker per trial costs seconds; 1-worker trials reuse theirs.
            reuse_actors=spec.resources.workers_per_trial == 1,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=str(storage.sweep_root(spec.storage.uri)),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=spec.checkpoint.keep,
                checkpoint_score_attribute=spec.objective.metric,
                checkpoint_score_order=spec.objective.mode,
            ),
            # A crashed trial (killed worker, lost node) restarts from its last checkpoint.
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            callbacks=[monitor, *callbacks, *([exporter.callback] if exporter else [])],
            verbose=0,  # our monitor prints one progress line instead of Tune's tables
        ),
    )
    try:
        results = tuner.fit()
    finally:
        if exporter:
            exporter.stop()  # up → 0, one last scrape if Prometheus is watching, then the port is free
    return monitor.finish(results)


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

    def __init__(self, spec: SweepSpec, summary_path, echo):
        self.spec, self.summary_path, self.echo = spec, summary_path, echo
        self.metric, self.mode = spec.objective.metric, spec.objective.mode
        self.started = time.time()
        self.trials: dict[str, dict] = {}
        self.last_write = 0.0

    # --- Tune hooks
    def on_trial_start(self, iteration, trials, trial, **info):
        self._trial(trial)["status"] = "running"
        self._update(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        record = self._trial(trial)
        record["config"] = self._config(trial)  # PBT mutates configs while trials run
        epoch = {"epoch": result["epoch"], **{k: result[k] for k in METRIC_KEYS if k in result}}
        record["val_split"] = result.get("val_split")
        donor = Path(result["restored_from"]).parent.name if result.get("restored_from") else None
        if donor and donor != trial.trial_id:  # restored from another trial's checkpoint: a PBT exploit
            record["exploits"].append({
                "epoch": result["resumed_from_epoch"],
                "donor": donor,
                "donor_checkpoint": result["restored_from"],
                "restored_weights": result.get("restored_weights"),
                "config": record["config"],
            })
            self.echo(f"trial {trial.trial_id} took over trial {donor}'s weights at epoch {result['resumed_from_epoch']}")
        record["history"] = [h for h in record["history"] if h["epoch"] < epoch["epoch"]] + [epoch]
        record["epochs"] = epoch["epoch"]
        record["seconds"] = result.get("time_total_s", record["seconds"])
        if result.get("checkpoint_path"):  # N-worker trials: Ray Train stores the checkpoint
            record["checkpoint"] = result["checkpoint_path"]
        elif trial.checkpoint is not None:
            record["checkpoint"] = trial.checkpoint.path
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
        self.echo(f"trial {trial.trial_id} crashed; restarting from its last checkpoint")
        self._update(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        record = self._trial(trial)
        record["status"] = "error"
        record["stop_reason"] = _first_line(trial.get_error())
        self.echo(f"trial {trial.trial_id} failed: {record['stop_reason']} (log: {trial.path})")
        self._update(trials, force=True)

    # --- summary
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
            "started_at": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "updated_at": _now(),
            "wall_seconds": round(time.time() - self.started, 2),
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
            storage.write_json_atomic(self.summary_path, summary)
            self.last_write = now
            self.echo(progress_line(summary))

    def finish(self, results) -> dict:
        """Fill in each trial's best retained checkpoint from the result grid; final write."""
        for result in results:
            trial_id = (result.metrics or {}).get("trial_id")
            record = self.trials.get(trial_id)
            if record is None:
                continue
            best = _best_retained_checkpoint(result, self.metric, self.mode)
            if best:
                record["checkpoint"] = best
        summary = self.summary(status="finished")
        storage.write_json_atomic(self.summary_path, summary)
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
