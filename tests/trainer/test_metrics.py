"""The sweep's Prometheus exporter without Ray: events in, Prometheus text format out (parsed with
prometheus_client's own parser), a real HTTP server on loopback, the file_sd targets, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from trainer.driver.metrics import (
    FINISHED,
    METRICS,
    PER_TRIAL,
    MetricsPortInUse,
    MetricsServer,
    ScrapeTargets,
    SweepMetrics,
)

REPO = Path(__file__).resolve().parents[2]


def samples(metrics: SweepMetrics) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} from the text format the exporter serves."""
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: SweepMetrics, name: str, **labels) -> float | None:
    labels = {"sweep": metrics.sweep, **labels}
    return samples(metrics).get((name, frozenset(labels.items())))


def trial_labels(metrics: SweepMetrics) -> set[str]:
    return {dict(labels)["trial"] for (name, labels) in samples(metrics) if "trial" in dict(labels)}


def epoch(n: int, val_acc: float, checkpoint: bool = True) -> dict:
    result = {
        "epoch": n, "train_loss": 1.0 / n, "train_acc": val_acc + 0.01, "val_loss": 1.1 / n, "val_acc": val_acc,
        "lr": 1e-3, "samples_per_second": 1000.0, "epoch_seconds": 0.5, "train_samples": 500,
        "resumed_from_epoch": 0, "val_split": "abc",
    }
    if checkpoint:
        result |= {"checkpoint_seconds": 0.02, "checkpoint_bytes": 4096}
    return result


def test_events_become_the_documented_series_with_prometheus_names():
    m = SweepMetrics("cnn", objective="val_acc", mode="max", planned_trials=3, scheduler="asha")
    for t in ("t0", "t1", "t2"):
        m.trial_added(t)
    assert value(m, "sweep_trials", state="pending") == 3
    assert value(m, "sweep_up") == 1
    assert value(m, "sweep_trials_planned") == 3
    assert value(m, "sweep_info", objective="val_acc", mode="max", scheduler="asha") == 1

    m.trial_started("t0")
    m.trial_result("t0", epoch(1, 0.80))
    m.trial_result("t0", epoch(2, 0.90))
    m.trial_completed("t0", stopped_early=False)
    m.trial_started("t1")
    m.trial_result("t1", epoch(1, 0.50, checkpoint=False))
    m.trial_completed("t1", stopped_early=True)
    m.trial_started("t2")
    m.trial_restarted("t2")
    m.trial_started("t2")
    m.trial_errored("t2")

    assert {s: value(m, "sweep_trials", state=s) for s in ("pending", "running", "terminated", "stopped_early", "error")} == {
        "pending": 0, "running": 0, "terminated": 1, "stopped_early": 1, "error": 1}
    assert value(m, "sweep_best_objective") == 0.90
    assert value(m, "sweep_best_trial_info", trial="t0") == 1
    assert value(m, "sweep_trial_objective", trial="t0") == 0.90  # the latest, a learning curve's last point
    assert value(m, "sweep_trial_objective", trial="t1") == 0.50
    assert value(m, "sweep_trial_loss", trial="t0", split="val") == pytest.approx(0.55)
    assert value(m, "sweep_trial_accuracy_ratio", trial="t0", split="train") == pytest.approx(0.91)
    assert value(m, "sweep_trial_epochs_completed", trial="t0") == 2
    assert value(m, "sweep_trial_samples_per_second", trial="t1") == 1000
    assert value(m, "sweep_trial_learning_rate", trial="t0") == 1e-3
    assert value(m, "sweep_early_stops_total") == 1
    assert value(m, "sweep_trial_errors_total") == 1
    assert value(m, "sweep_trial_retries_total") == 1
    assert value(m, "sweep_trial_starts_total") == 4
    assert value(m, "sweep_epochs_total") == 3
    assert value(m, "sweep_train_samples_total") == 1500
    assert value(m, "sweep_epoch_duration_seconds_count") == 3
    assert value(m, "sweep_epoch_duration_seconds_sum") == pytest.approx(1.5)
    assert value(m, "sweep_checkpoint_write_duration_seconds_count") == 2  # t1's epoch wrote none
    assert value(m, "sweep_checkpoint_write_bytes_total") == 2 * 4096
    assert value(m, "sweep_pbt_exploits_total") == 0
    m.pbt_exploit("t0")
    assert value(m, "sweep_pbt_exploits_total") == 1

    m.finish()
    assert value(m, "sweep_up") == 0

    # Conventions: every metric is listed in METRICS (the README's table), counters end in _total,
    # every series has the sweep label.
    families = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    for name, (kind, _, _) in METRICS.items():
        family = families[name.removesuffix("_total")] if kind == "counter" else families[name]
        assert family.type == kind
    for (name, labels) in samples(m):
        assert dict(labels)["sweep"] == "cnn"
        assert not name.endswith("_total") or METRICS.get(name, ("counter",))[0] == "counter"


def test_min_mode_objective_tracks_the_lowest_value():
    m = SweepMetrics("loss", objective="val_loss", mode="min")
    m.trial_result("a", {"epoch": 1, "val_loss": 0.7})
    m.trial_result("b", {"epoch": 1, "val_loss": 0.4})
    m.trial_result("a", {"epoch": 2, "val_loss": 0.5})
    m.trial_result("b", {"epoch": 2, "val_loss": float("nan")})  # a diverged epoch never becomes "best"
    assert value(m, "sweep_best_objective") == 0.4
    assert value(m, "sweep_best_trial_info", trial="b") == 1
    assert value(m, "sweep_best_trial_info", trial="a") is None


def test_progress_timestamp_exists_only_while_a_trial_runs():
    m = SweepMetrics("s")
    progress = lambda t: value(m, "sweep_trial_last_progress_timestamp_seconds", trial=t)  # noqa: E731
    m.trial_added("a")
    assert progress("a") is None  # pending
    m.trial_started("a")
    assert progress("a") is not None
    m.trial_paused("a")
    assert progress("a") is None and value(m, "sweep_trials", state="paused") == 1
    m.trial_started("a")
    m.trial_result("a", epoch(1, 0.5))
    assert progress("a") is not None
    m.trial_restarted("a")  # crashed: pending until it restarts
    assert progress("a") is None and value(m, "sweep_trials", state="pending") == 1
    m.trial_started("a")
    m.trial_result("a", epoch(2, 0.6))
    m.trial_completed("a", stopped_early=True)
    assert progress("a") is None
    assert value(m, "sweep_trial_objective", trial="a") == 0.6  # the rest of its series stay (within the cap)


def test_per_trial_series_are_capped_to_running_plus_the_best_finished():
    keep, concurrency, total = 3, 4, 60
    m = SweepMetrics("big", keep_finished=keep)
    accuracy = {f"t{i:03d}": (i * 37 % total) / total for i in range(total)}  # a shuffled ranking
    running: list[str] = []
    max_labels = 0
    for trial_id in accuracy:
        m.trial_added(trial_id)
    queue = list(accuracy)
    while queue or running:
        while queue and len(running) < concurrency:
            running.append(queue.pop(0))
            m.trial_started(running[-1])
        trial_id = running.pop(0)
        m.trial_result(trial_id, epoch(1, accuracy[trial_id] / 2))
        m.trial_result(trial_id, epoch(2, accuracy[trial_id]))
        m.trial_completed(trial_id, stopped_early=False)
        labels = trial_labels(m)
        finished_exposed = {t for t in labels if m.state(t) in FINISHED}
        assert len(finished_exposed) <= keep
        assert len(labels) <= len(running) + keep
        max_labels = max(max_labels, len(labels))

    assert max_labels <= concurrency + keep < total
    best = sorted(accuracy, key=accuracy.get, reverse=True)[:keep]
    assert trial_labels(m) == m.exposed_trials() == set(best)
    evicted = next(t for t in accuracy if t not in best)
    assert not any(dict(labels).get("trial") == evicted for (_, labels) in samples(m))
    assert value(m, "sweep_trials", state="terminated") == total  # counts cover every trial
    assert set(PER_TRIAL) >= {"sweep_trial_objective", "sweep_trial_loss", "sweep_trial_last_progress_timestamp_seconds"}


def test_keep_finished_zero_drops_a_trial_as_soon_as_it_ends():
    m = SweepMetrics("s", keep_finished=0)
    m.trial_started("a")
    m.trial_result("a", epoch(1, 0.5))
    m.trial_errored("a")
    assert m.exposed_trials() == set()
    assert value(m, "sweep_best_objective") == 0.5  # sweep-wide series are not per trial


def test_each_sweep_has_its_own_registry_and_the_global_one_is_untouched():
    before = {f.name for f in REGISTRY.collect()}
    a, b = SweepMetrics("same-name"), SweepMetrics("same-name")  # no "duplicated timeseries" error
    a.trial_result("x", epoch(1, 0.9))
    assert value(a, "sweep_best_objective") == 0.9
    assert value(b, "sweep_best_objective") is None
    assert {f.name for f in REGISTRY.collect()} == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_server_serves_the_registry_on_loopback_and_frees_the_port():
    m = SweepMetrics("served")
    server = MetricsServer(m.registry, 0, "127.0.0.1")
    m.trial_result("t", epoch(1, 0.75))
    assert 'sweep_best_objective{sweep="served"} 0.75' in scrape(server.port)
    server.stop()
    MetricsServer(m.registry, server.port, "127.0.0.1").stop()  # the next sweep can have the port


def test_a_busy_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(MetricsPortInUse, match="--metrics-port"):
            MetricsServer(SweepMetrics("s").registry, taken.getsockname()[1], "127.0.0.1")


def test_stop_waits_for_prometheus_to_scrape_the_final_state():
    m = SweepMetrics("final")
    server = MetricsServer(m.registry, 0, "127.0.0.1")
    assert server.final_scrape_wait() == 0  # nobody scrapes: stop() returns at once
    bodies: list[str] = []
    done = threading.Event()

    def scraper():  # a stand-in for Prometheus: scrapes until the server goes away
        while not done.is_set():
            try:
                bodies.append(scrape(server.port))
            except OSError:
                return
            done.wait(0.2)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    while len(bodies) < 2:
        done.wait(0.05)
    m.finish()
    server.stop()  # returns after a scrape that started after finish()
    done.set()
    thread.join()
    assert 'sweep_up{sweep="final"} 1.0' in bodies[0]
    assert 'sweep_up{sweep="final"} 0.0' in bodies[-1]


def test_scrape_targets_are_prometheus_file_sd_and_removed_at_the_end(tmp_path):
    targets = ScrapeTargets("cnn", tmp_path / "targets")
    path = targets.write("driver", ["127.0.0.1:9500"])
    assert path == tmp_path / "targets" / "cnn.driver.json"
    assert json.loads(path.read_text()) == [{"targets": ["127.0.0.1:9500"], "labels": {"sweep": "cnn"}}]
    targets.remove()
    assert not path.exists()
    assert ScrapeTargets("cnn", "").write("driver", ["127.0.0.1:9500"]) is None  # "" turns them off


@pytest.mark.slow  # imports torch and ray in a subprocess (starts no Ray): ~10 s
def test_sweepctl_run_with_a_busy_metrics_port_fails_cleanly_and_writes_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "run", "sweeps/quickstart.yaml", "--metrics-port", str(port),
             "--set", f"storage.uri={tmp_path}"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
            env={**os.environ, "SWEEP_METRICS_ADDR": "127.0.0.1", "SWEEP_PROMETHEUS_TARGETS": ""},
        )
    assert result.returncode == 2, result.stderr
    assert f"metrics port {port}" in result.stderr and "--metrics-port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "quickstart").exists()  # rerunning with another port is not refused


def test_the_tune_callback_pickles_without_its_live_metrics(tmp_path):
    # Tune writes its run config, callbacks included, to tuner.pkl; the driver's one callback
    # (SweepEvents, which feeds the metrics) must pickle, and the copy must not carry the live
    # metrics (locks, the registry), the record writer, the driver log or the exporter's server.
    import pickle

    from conftest import BASE_SPEC, deep_update
    from service.core.record import Objective, RecordWriter, SegmentedLog, SweepStore, new_index
    from service.core.spec import SweepSpec
    from trainer.driver.events import SweepEvents
    from trainer.driver.progress import Progress

    spec = SweepSpec.model_validate(deep_update(BASE_SPEC, {"name": "pickled", "storage": {"uri": str(tmp_path)}}))
    store = SweepStore(str(tmp_path), "pickled")
    writer = RecordWriter(store, new_index("pickled", Objective(metric="val_acc", mode="max"), max_epochs=2,
                                           num_trials=1, attempt=1))
    m = SweepMetrics("pickled")
    server = MetricsServer(m.registry, 0, "127.0.0.1")
    try:
        events = SweepEvents(spec, writer, Progress(lambda line: None, SegmentedLog(store.driver_log_uri(), attempt=1,
                                                                                     stream="driver")),
                             attempt=1, metrics=m, on_setup=lambda: server.port)
        copy = pickle.loads(pickle.dumps(events))
        assert isinstance(copy, SweepEvents)
        assert not any(hasattr(copy, live) for live in ("metrics", "writer", "progress", "on_setup", "spec"))

        class Trial:
            trial_id, status, config, checkpoint = "t", "RUNNING", {}, None

        events.on_trial_start(0, [], Trial())  # the original still feeds the live metrics
        assert m.exposed_trials() == {"t"} and value(m, "sweep_trials", state="running") == 1
    finally:
        server.stop()


def test_the_readme_lists_every_metric():
    readme = (REPO / "README.md").read_text()
    missing = [name for name in METRICS if f"| `{name}` |" not in readme]
    assert not missing, f"README's metrics table lacks {missing}"


def info_series(metrics: SweepMetrics) -> dict[str, dict[str, str]]:
    """sweep_trial_info's series: trial id → its labels (beyond sweep and trial)."""
    out = {}
    for (name, labels), v in samples(metrics).items():
        if name == "sweep_trial_info":
            assert v == 1
            labels = dict(labels)
            assert labels.pop("sweep") == metrics.sweep
            out[labels.pop("trial")] = labels
    return out


def test_trial_info_names_each_trial_by_its_config_with_bounded_labels():
    from trainer.driver.metrics import CONFIG_MAX, CONFIG_VALUE_MAX, MAX_CONFIG_LABELS

    keys = ["train.optimizer.lr", "model.filters", "model.hidden_sizes", "train.optimizer.name",
            *(f"model.extra.p{i}" for i in range(10))]  # more than MAX_CONFIG_LABELS searched values
    m = SweepMetrics("info", config_keys=keys)
    config = {"train.optimizer.lr": 0.001, "model.filters": 32, "model.hidden_sizes": [32, 64],
              "train.optimizer.name": "adam", **{f"model.extra.p{i}": "v" * 100 for i in range(10)}}
    m.trial_added("a")
    assert info_series(m) == {}  # pending trials have no per-trial series, info included
    m.trial_started("a", config=config)
    labels = info_series(m)["a"]
    assert set(labels) == {"config", "train_optimizer_lr", "model_filters", "model_hidden_sizes",
                           "train_optimizer_name", "model_extra_p0", "model_extra_p1", "model_extra_p2",
                           "model_extra_p3"}  # the first 8 searched values, as valid label names
    assert len(labels) - 1 == MAX_CONFIG_LABELS
    assert labels["train_optimizer_lr"] == "0.001" and labels["model_hidden_sizes"] == "[32,64]"
    assert labels["config"].startswith("lr=0.001 filters=32 hidden_sizes=[32,64] name=adam p0=vvv")
    assert len(labels["config"]) <= CONFIG_MAX and labels["config"].endswith("…")
    assert all(len(v) <= CONFIG_VALUE_MAX for v in labels.values() if v is not labels["config"])
    assert len(labels["model_extra_p0"]) == CONFIG_VALUE_MAX

    # Values compact and unambiguous names: 1e-6, not 1e-06; two keys ending in lr keep a parent.
    m2 = SweepMetrics("short", config_keys=["train.optimizer.lr", "train.scheduler.lr", "train.flag"])
    m2.trial_started("b", config={"train.optimizer.lr": 1e-6, "train.scheduler.lr": 5e-7, "train.flag": True})
    assert info_series(m2)["b"] == {"config": "optimizer.lr=1e-6 scheduler.lr=5e-7 flag=true",
                                    "train_optimizer_lr": "1e-6", "train_scheduler_lr": "5e-7", "train_flag": "true"}


def test_trial_info_follows_the_trials_series_and_pbt_config_changes():
    m = SweepMetrics("life", keep_finished=1, config_keys=["train.optimizer.lr"])
    m.trial_started("a", config={"train.optimizer.lr": 0.01})
    m.trial_result("a", epoch(1, 0.9))
    m.trial_started("b", config={"train.optimizer.lr": 0.1})
    m.trial_result("b", epoch(1, 0.5))
    # PBT: b takes over a's weights with a perturbed config, and starts again: one series, new labels.
    m.trial_paused("b")
    assert info_series(m)["b"]["config"] == "lr=0.1"  # paused trials keep theirs
    m.trial_started("b", config={"train.optimizer.lr": 0.012})
    assert info_series(m) == {"a": {"config": "lr=0.01", "train_optimizer_lr": "0.01"},
                              "b": {"config": "lr=0.012", "train_optimizer_lr": "0.012"}}
    m.trial_completed("a", stopped_early=False)
    assert set(info_series(m)) == {"a", "b"}  # finished and among the best kept: still in the legend
    m.trial_result("b", epoch(2, 0.4))
    m.trial_completed("b", stopped_early=False)
    assert set(info_series(m)) == {"a"} == m.exposed_trials()  # b's series went, its info with them
    # A trial reporting without a start (no config known) still gets one, so joins never drop it.
    m.trial_result("c", epoch(1, 0.3))
    assert info_series(m)["c"] == {"config": "", "train_optimizer_lr": ""}  # empty: Prometheus drops them


def test_the_driver_callback_hands_the_metrics_each_trials_config_at_its_start(tmp_path):
    from conftest import BASE_SPEC, deep_update
    from service.core.record import Objective, RecordWriter, SweepStore, new_index
    from service.core.spec import SweepSpec, search_space
    from trainer.driver.events import SweepEvents
    from trainer.driver.progress import Progress

    spec = SweepSpec.model_validate(deep_update(BASE_SPEC, {
        "name": "cfg", "storage": {"uri": str(tmp_path)}, "train": {"optimizer": {"lr": {"grid": [1e-3, 3e-4]}}}}))
    writer = RecordWriter(SweepStore(str(tmp_path), "cfg"),
                          new_index("cfg", Objective(metric="val_acc", mode="max"), max_epochs=2, num_trials=2, attempt=1))
    m = SweepMetrics("cfg", config_keys=list(search_space(spec)))
    events = SweepEvents(spec, writer, Progress(lambda line: None, None), attempt=1, metrics=m)

    class Trial:
        status, checkpoint = "RUNNING", None

        def __init__(self, trial_id, lr):
            self.trial_id, self.config = trial_id, {"train.optimizer.lr": lr, "train.epochs": 2}

    events.on_trial_start(0, [], Trial("t0", 1e-3))
    events.on_trial_start(0, [], Trial("t1", 3e-4))
    assert info_series(m) == {"t0": {"config": "lr=0.001", "train_optimizer_lr": "0.001"},
                              "t1": {"config": "lr=0.0003", "train_optimizer_lr": "0.0003"}}


def test_gpu_trials_export_their_peak_memory_and_cpu_trials_no_series():
    m = SweepMetrics("gpu")
    for t in ("gpu", "cpu"):
        m.trial_started(t)
    m.trial_result("gpu", epoch(1, 0.5) | {"gpu_peak_bytes": 3 * 2**30})
    m.trial_result("cpu", epoch(1, 0.5))
    assert value(m, "sweep_trial_gpu_peak_bytes", trial="gpu") == 3 * 2**30
    assert value(m, "sweep_trial_gpu_peak_bytes", trial="cpu") is None


def test_a_resumed_drivers_metrics_count_the_trials_its_earlier_attempts_recorded(tmp_path):
    """After a resume (or with a warm start's copies) the record holds trials this driver will not
    run: trials by state, the best objective and the best trial cover them from the first scrape,
    the finished ones keep their final series, and counters stay what this driver did (0)."""
    from conftest import BASE_SPEC, deep_update
    from service.core.record import EpochResult, Objective, RecordWriter, SweepStore, new_index
    from service.core.spec import SweepSpec, search_space
    from trainer.driver.events import SweepEvents
    from trainer.driver.progress import Progress

    spec = SweepSpec.model_validate(deep_update(BASE_SPEC, {
        "name": "again", "storage": {"uri": str(tmp_path)},
        "train": {"epochs": 2, "optimizer": {"lr": {"grid": [1e-3, 3e-4, 1e-4, 3e-5]}}}}))
    store = SweepStore(str(tmp_path), "again")
    earlier = RecordWriter(store, new_index("again", Objective(metric="val_acc", mode="max"), max_epochs=2,
                                            num_trials=4, attempt=1))
    for trial_id, lr, status, accuracies in [("done", 1e-3, "terminated", [0.6, 0.8]), ("cut", 3e-4, "stopped_early", [0.5]),
                                             ("broke", 1e-4, "error", []), ("midway", 3e-5, "running", [0.9])]:
        record = earlier.trial(trial_id, {"train.optimizer.lr": lr})
        for n, acc in enumerate(accuracies, start=1):
            earlier.add_result(record, EpochResult(epoch=n, val_acc=acc, val_loss=1 - acc))
        earlier.set_status(record, status)
        earlier.changed(record)
    earlier.write_index("interrupted", 1.0)

    index = store.read_index()
    writer = RecordWriter(store, new_index("again", Objective(metric="val_acc", mode="max"), max_epochs=2,
                                           num_trials=4, attempt=2), store.read_trials(index))
    m = SweepMetrics("again", config_keys=list(search_space(spec)))
    SweepEvents(spec, writer, Progress(lambda line: None, None), attempt=2, metrics=m)

    states = {s: value(m, "sweep_trials", state=s) for s in ("pending", "running", "terminated", "stopped_early", "error")}
    assert states == {"pending": 1, "running": 0, "terminated": 1, "stopped_early": 1, "error": 1}
    # the best includes the unfinished trial's recorded epoch: what it reported is what it reported
    assert value(m, "sweep_best_objective") == 0.9 and value(m, "sweep_best_trial_info", trial="midway") == 1
    assert value(m, "sweep_trial_objective", trial="done") == 0.8
    assert value(m, "sweep_trial_epochs_completed", trial="done") == 2
    assert value(m, "sweep_epochs_total") == 0 and value(m, "sweep_trial_errors_total") == 0
    assert m.state("midway") == "pending"
    m.trial_started("midway")  # Tune restarts it: it moves from pending to running, counted once
    assert value(m, "sweep_trials", state="pending") == 0 and value(m, "sweep_trials", state="running") == 1


def test_an_epoch_that_breaks_a_constraint_is_never_the_best_objective():
    from service.core.spec import parse_constraint

    m = SweepMetrics("bounded", constraints=[parse_constraint("params <= 2e6")])
    m.trial_result("big", {**epoch(1, 0.95), "params": 3_000_000})
    assert value(m, "sweep_best_objective") is None  # no epoch kept them yet: no best to show
    assert value(m, "sweep_trial_objective", trial="big") == 0.95  # the trial's own series still shows it
    m.trial_result("small", {**epoch(1, 0.7), "params": 1_000_000})
    m.trial_result("unreported", epoch(1, 0.99))  # params not reported: cannot be shown to keep it
    assert value(m, "sweep_best_objective") == 0.7 and value(m, "sweep_best_trial_info", trial="small") == 1
    m.trial_restored("earlier", "terminated", results=[{**epoch(1, 0.9), "params": 5_000_000},
                                                       {**epoch(2, 0.8), "params": 1_500_000}])
    assert value(m, "sweep_best_objective") == 0.8 and value(m, "sweep_best_trial_info", trial="earlier") == 1
