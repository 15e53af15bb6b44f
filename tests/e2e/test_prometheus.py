"""The exporter, the alert rules and the Grafana dashboard against a real Prometheus (Debian's
`prometheus` and `promtool`; `.ci/run` installs them). With CI=true a missing binary fails the
tests; elsewhere they skip and say how to install it. All traffic stays on 127.0.0.1.

The big test runs a real sweep (ASHA on digits, so some trials stop early) with the exporter on,
lets a real Prometheus scrape it and Ray's metrics agent every second, then runs every query of
every panel in deploy/grafana/sweeps.json through Prometheus's HTTP API and checks the values
against the sweep's record (sweep.json and each trial's trial.json).

Not verifiable here: the two GPU panels ("GPU utilization", "GPU memory used"). Ray exports
ray_node_gpus_utilization / ray_node_gram_used only for nodes that have GPUs, and this machine has
none; the test asserts they are the only panels without data (and requires them too on a GPU machine).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "sweeps.json"
GPU_PANELS = {"GPU utilization", "GPU memory used"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found: install Debian's prometheus package (apt-get install -y prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR)


# ------------------------------------------------------------------------------- rules and configs
def test_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rules found" in result.stdout


def test_alert_rule_unit_tests_pass_and_show_the_stalled_trial_alert_firing():
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())
    firing = [
        case for group in tests["tests"] for case in group["alert_rule_test"]
        if case["alertname"] == "SweepTrialStalled" and case["exp_alerts"]
    ]
    assert firing and firing[0]["exp_alerts"][0]["exp_labels"]["trial"] == "a_00000"  # the silent one only
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_alert_would_fail_the_rule_tests(tmp_path):
    # The rule tests really evaluate the rules: with the stalled threshold at 2 hours they fail.
    rules = (PROMETHEUS_DIR / "rules.yml").read_text().replace("> 20 * 60", "> 120 * 60")
    (tmp_path / "rules.yml").write_text(rules)
    shutil.copy(PROMETHEUS_DIR / "rules_test.yml", tmp_path)
    result = subprocess.run([tool("promtool"), "test", "rules", "rules_test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "SweepTrialStalled" in result.stdout + result.stderr


def test_local_prometheus_config_is_valid():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_match_the_rules_and_the_exporter():
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    rule_cr = yaml.safe_load((PROMETHEUS_DIR / "prometheusrule.yaml").read_text())
    assert rule_cr["kind"] == "PrometheusRule"
    assert rule_cr["spec"]["groups"] == rules["groups"]  # the same alerts on Kubernetes and locally

    monitors = {m["metadata"]["name"]: m for m in yaml.safe_load_all((PROMETHEUS_DIR / "podmonitors.yaml").read_text())}
    assert {m["kind"] for m in monitors.values()} == {"PodMonitor"}
    driver = monitors["sweep-driver"]["spec"]["podMetricsEndpoints"][0]
    assert driver["port"] == "sweep-metrics" and driver["honorLabels"] is True
    relabeled = {r["targetLabel"]: r for r in driver["relabelings"]}
    assert relabeled["job"]["replacement"] == "sweep-driver"  # what the SweepDown alert selects
    down = next(r for r in rules["groups"][0]["rules"] if r["alert"] == "SweepDown")
    assert 'up{job="sweep-driver"}' in down["expr"]
    ray = monitors["sweep-ray-nodes"]["spec"]["podMetricsEndpoints"][0]
    assert ray["port"] == "metrics"  # KubeRay's name for Ray's metrics port
    assert "sweep" in {r["targetLabel"] for r in ray["relabelings"]}  # the dashboard's Ray panels filter by it


def test_dashboard_is_wired_to_the_exporter_and_the_sweep_variable():
    from trainer.driver.metrics import METRICS

    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["sweep"]["query"]["query"] == "label_values(sweep_info, sweep)"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    cells = [(p["gridPos"]["x"] + dx, p["gridPos"]["y"] + dy) for p in dashboard["panels"]
             for dx in range(p["gridPos"]["w"]) for dy in range(p["gridPos"]["h"])]
    assert len(cells) == len(set(cells)), "panels overlap"
    exported = {name.removesuffix("_total") if kind == "counter" else name for name, (kind, _, _) in METRICS.items()}
    used = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            # every series selector filters by the (multi-value) sweep variable
            names = re.findall(r"\b((?:sweep|ray)_[a-z_]+)\b(?!\()", target["expr"])
            selectors = re.findall(r"\b((?:sweep|ray)_[a-z_]+)\{([^}]*)\}", target["expr"])
            assert names and len(selectors) == len(names), (panel["title"], target["expr"])
            assert all('sweep=~"$sweep"' in labels for _, labels in selectors), (panel["title"], target["expr"])
            for metric in re.findall(r"\b(sweep_[a-z_]+)\{", target["expr"]):
                base = re.sub(r"_(bucket|count|sum|total)$", "", metric)
                assert base in exported, f"{panel['title']}: {metric} is not exported by trainer/driver/metrics.py"
                used.add(base)
    assert len(used) >= 15  # the regex above really looks at the queries


def test_dashboard_is_what_grafana_imports_and_where_users_look():
    """The panels users trip on, as Grafana 10/11 reads their JSON."""
    dashboard = json.loads(DASHBOARD.read_text())
    # Import asks for a Prometheus data source (__inputs); it becomes the `datasource` variable's
    # starting value, and the panels follow the variable (Helm's ConfigMap fills in "default").
    (ds_input,) = dashboard["__inputs"]
    assert ds_input == {**ds_input, "name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}
    requires = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    used_panels = {("panel", p["type"]) for p in dashboard["panels"] if p["type"] != "row"}
    assert requires == {("grafana", "grafana"), ("datasource", "prometheus")} | used_panels
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    assert variables["sweep"]["datasource"]["uid"] == "${datasource}"
    # Two sweeps can be compared.
    assert variables["sweep"]["multi"] is True and variables["sweep"]["includeAll"] is True

    panels = {p["title"]: p for p in dashboard["panels"]}
    # "Best trial" shows the trial's name (its legend), not the info series' value 1.
    best = panels["Best trial"]
    assert best["type"] == "stat" and best["options"]["textMode"] == "name"
    (target,) = best["targets"]
    assert target["legendFormat"].startswith("{{trial}}") and target["instant"] is True
    assert best["options"]["reduceOptions"]["calcs"] == ["lastNotNull"]
    # "Driver up" says up / down / no driver, coloured.
    up = panels["Driver up"]["fieldConfig"]["defaults"]
    values = {k: (v["text"], v["color"]) for m in up["mappings"] if m["type"] == "value" for k, v in m["options"].items()}
    assert values == {"1": ("up", "green"), "0": ("down", "red")}
    special = [m["options"] for m in up["mappings"] if m["type"] == "special"]
    assert special and special[0]["match"] == "null+nan" and special[0]["result"]["text"] == "no driver"
    assert up["noValue"] == "no driver"  # no series at all (the driver is gone)
    # Per-trial panels name each curve by its config: joined with sweep_trial_info, legend {{config}}.
    from trainer.driver.metrics import PER_TRIAL

    per_trial = [(p["title"], t) for p in dashboard["panels"] for t in p.get("targets", [])
                 if set(re.findall(r"\b(sweep_[a-z_]+)\{", t["expr"])) & (set(PER_TRIAL) - {"sweep_trial_info"})]
    assert len(per_trial) >= 6
    for title, t in per_trial:
        assert "group_left(config) sweep_trial_info{" in t["expr"], title
        assert "{{trial}}" in t["legendFormat"] and "{{config}}" in t["legendFormat"], title


# ------------------------------------------------------------------------------- the live test
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A real Prometheus on 127.0.0.1, with the shipped config adapted: 1 s scrapes and rule
    evaluation, file_sd targets from a temporary directory."""

    def __init__(self, tmp_path: Path, targets_dir: Path):
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
        for job in config["scrape_configs"]:
            for sd in job["file_sd_configs"]:
                sd["files"] = [str(targets_dir / Path(f).name) for f in sd["files"]]
                sd["refresh_interval"] = "1s"
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "prometheus.log"
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query_range(self, expr: str, start: float, end: float) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=1)["result"]

    def last(self, expr: str, start: float, end: float) -> dict[str, float]:
        """Each series' last value in [start, end], keyed by its labels (as JSON)."""
        return {json.dumps(s["metric"], sort_keys=True): float(s["values"][-1][1]) for s in self.query_range(expr, start, end)}

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def prometheus(tmp_path, monkeypatch):
    targets = tmp_path / "targets"
    targets.mkdir()  # Prometheus watches this directory for the sweep's file_sd files
    monkeypatch.setenv("SWEEP_PROMETHEUS_TARGETS", str(targets))
    monkeypatch.setenv("SWEEP_METRICS_ADDR", "127.0.0.1")
    server = Prometheus(tmp_path, targets)
    yield server
    server.stop()


RAY_SERIES = ("ray_node_cpu_utilization", "ray_node_mem_used", "ray_resources")


def wait_until_scraped(prometheus: Prometheus, sweep: str, timeout: float = 90) -> None:
    """Until Prometheus has scraped the sweep's driver and Ray targets at least twice each, and
    Ray's series are in (the raylet reports ray_resources every 10 s: a fresh Ray may not have yet)."""
    deadline = time.monotonic() + timeout
    while True:
        scraped = prometheus.api("query", query=f'count by (job) (count_over_time(up{{sweep="{sweep}"}}[5m]) >= 2)')
        ray = prometheus.api("query", query=f'count by (__name__) ({{sweep="{sweep}",__name__=~"{"|".join(RAY_SERIES)}"}})')
        if {r["metric"].get("job") for r in scraped["result"]} >= {"sweep-driver", "ray"} and len(ray["result"]) == 3:
            return
        if time.monotonic() > deadline:
            targets = prometheus.api("targets")["activeTargets"]
            raise AssertionError(f"Prometheus did not scrape the sweep's targets; it has {targets}")
        time.sleep(0.5)


try:
    from ray.tune import Callback as _Callback
except ImportError:  # the fast tests above need no Ray
    _Callback = object


class WaitUntilScraped(_Callback):
    """Prometheus applies file_sd changes in batches (every 5 s), and a sweep this small can end
    sooner. Real sweeps last minutes; here the driver loop holds at the first trial start until
    both targets were scraped (the trial keeps training meanwhile). Synchronization, not a timing
    assertion: it only waits."""

    def __init__(self, prometheus: Prometheus, sweep: str):
        self.prometheus, self.sweep, self.done = prometheus, sweep, False

    def on_trial_start(self, iteration, trials, trial, **info):
        if not self.done:
            wait_until_scraped(self.prometheus, self.sweep)
            self.done = True

    def __reduce__(self):  # Tune pickles callbacks into tuner.pkl: that copy needs no waiting
        return (_Callback, ())


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, Grafana variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def substitute(expr: str, sweep: str) -> str:
    # $__rate_interval: Grafana uses max(4 × scrape interval, step + scrape interval); scrapes are 1 s here.
    # $sweep: a multi-value variable, as Grafana's Prometheus data source writes two selected sweeps.
    sweep = f"({sweep}|no-such-sweep)"
    expr = expr.replace("$__rate_interval", "4s").replace("${sweep}", sweep).replace("$sweep", sweep)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def finite_values(series: list[dict]) -> list[float]:
    return [float(v) for s in series for _, v in s["values"] if math.isfinite(float(v))]


@pytest.mark.slow
def test_every_dashboard_panel_returns_series_that_agree_with_the_record(ray_local, make_spec, prometheus):
    from service.core.record import SweepStore
    from trainer.driver.sweep import run_sweep

    # Learning rates from good to hopeless, one trial at a time: ASHA stops the weak ones after epoch 1.
    spec = make_spec(
        name="prom-e2e",
        train={"epochs": 2, "optimizer": {"lr": {"grid": [3e-3, 1e-3, 1e-6, 5e-7]}}},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        resources={"max_concurrent_trials": 1},
        metrics={"port": free_port()},
    )
    start = time.time()
    index = run_sweep(spec, echo=lambda line: None, callbacks=[WaitUntilScraped(prometheus, spec.name)])
    end = time.time() + 2  # the exporter waited for the final scrape before it stopped
    trials = SweepStore(spec.storage.uri, spec.name).read_trials(index)
    stopped_early = [t for t in trials if t.status == "stopped_early"]
    assert stopped_early and index.trial_states.get("terminated"), index.trial_states

    # Prometheus really scraped the driver and Ray's metrics agent, with the sweep label.
    assert max(finite_values(prometheus.query_range('up{job="sweep-driver",sweep="prom-e2e"}', start, end))) == 1
    assert max(finite_values(prometheus.query_range('up{job="ray",sweep="prom-e2e"}', start, end))) == 1

    # Every panel query returns data (GPU panels only where there are GPUs).
    import torch

    empty = set()
    for title, expr in panel_queries():
        series = prometheus.query_range(substitute(expr, spec.name), start - 5, end)
        if not finite_values(series):
            empty.add(title)
    expected_empty = set() if torch.cuda.is_available() else GPU_PANELS
    assert empty == expected_empty, f"panels without data: {sorted(empty)}"

    # The per-trial panels' joins with sweep_trial_info: every series carries the trial's config.
    joined = [(title, expr) for title, expr in panel_queries() if "group_left(config)" in expr]
    assert len(joined) >= 6
    for title, expr in joined:
        series = prometheus.query_range(substitute(expr, spec.name), start - 5, end)
        assert series and all(s["metric"].get("config", "").startswith("lr=") for s in series), (title, series[:2])

    # The values Prometheus holds agree with the record.
    sel = '{sweep="prom-e2e"}'
    last = lambda expr: prometheus.last(expr, start, end)  # noqa: E731
    states = {json.loads(k)["state"]: v for k, v in last(f"sweep_trials{sel}").items()}
    assert {s: n for s, n in states.items() if n} == index.trial_states
    (best,) = last(f"sweep_best_objective{sel}").values()
    assert best == index.best.best.val_acc
    # The best trial may change during the sweep (a later trial beats the first): the exporter then
    # moves the series, so the range holds one per trial that was best. The one scraped last is the
    # record's best, and every other one ended before it (none is left beside it).
    holders = sorted(prometheus.query_range(f"sweep_best_trial_info{sel}", start, end),
                     key=lambda s: float(s["values"][-1][0]))
    assert holders[-1]["metric"]["trial"] == index.best_trial
    assert all(float(s["values"][-1][0]) < float(holders[-1]["values"][-1][0]) for s in holders[:-1]), holders
    assert list(last(f"sweep_early_stops_total{sel}").values()) == [len(stopped_early)]
    assert list(last(f"sweep_trial_starts_total{sel}").values()) == [len(trials) + sum(t.restarts for t in trials)]
    epochs = [h for t in trials for h in t.history]
    assert list(last(f"sweep_epochs_total{sel}").values()) == [len(epochs)]
    assert list(last(f"sweep_epoch_duration_seconds_count{sel}").values()) == [len(epochs)]
    checkpoints = [h for h in epochs if h.checkpoint_bytes is not None]
    assert list(last(f"sweep_checkpoint_write_duration_seconds_count{sel}").values()) == [len(checkpoints)]
    assert list(last(f"sweep_checkpoint_write_bytes_total{sel}").values()) == [sum(h.checkpoint_bytes for h in checkpoints)]
    assert list(last(f"sweep_train_samples_total{sel}").values()) == [sum(h.train_samples for h in epochs)]
    objective = {json.loads(k)["trial"]: v for k, v in last(f"sweep_trial_objective{sel}").items()}
    assert objective == {t.trial_id: t.history[-1].val_acc for t in trials}  # 4 trials < the cap of 10
    completed = {json.loads(k)["trial"]: v for k, v in last(f"sweep_trial_epochs_completed{sel}").items()}
    assert completed == {t.trial_id: t.epochs for t in trials}

    # sweep_trial_info: one series per exposed trial, value 1, its searched value as a label of its
    # own and in the compact config string; a bounded label set, bounded values.
    from trainer.driver.metrics import CONFIG_MAX, CONFIG_VALUE_MAX, MAX_CONFIG_LABELS, compact_value

    info = {json.loads(k)["trial"]: (json.loads(k), v) for k, v in last(f"sweep_trial_info{sel}").items()}
    assert set(info) == {t.trial_id for t in trials}  # 4 trials < the cap of 10: all still in the legend
    scrape_labels = {"__name__", "sweep", "trial", "config", "job", "instance"}
    for t in trials:
        labels, v = info[t.trial_id]
        lr = compact_value(t.config["train.optimizer.lr"])
        assert v == 1 and labels["train_optimizer_lr"] == lr and labels["config"] == f"lr={lr}"
        assert len(set(labels) - scrape_labels) <= MAX_CONFIG_LABELS
        assert len(labels["config"]) <= CONFIG_MAX
        assert all(len(value) <= CONFIG_VALUE_MAX for name, value in labels.items() if name not in scrape_labels)
    assert {info[t.trial_id][0]["config"] for t in trials} == {"lr=0.003", "lr=0.001", "lr=1e-6", "lr=5e-7"}
    # The legends' join: each trial's objective, now carrying its config label.
    joined = last(f"sweep_trial_objective{sel} * on(sweep, trial, instance) group_left(config) sweep_trial_info{sel}")
    assert {(json.loads(k)["trial"], json.loads(k)["config"]): v for k, v in joined.items()} == {
        (t.trial_id, info[t.trial_id][0]["config"]): t.history[-1].val_acc for t in trials}
    # The "Best trial" panel names the record's best, with its config. Over the range it holds one
    # series per trial that was best at some time, as sweep_best_trial_info does: the last scraped counts.
    best_panel = substitute(next(e for title, e in panel_queries() if title == "Best trial"), spec.name)
    best_named = max(prometheus.query_range(best_panel, start, end), key=lambda s: float(s["values"][-1][0]))
    assert best_named["metric"]["trial"] == index.best_trial and best_named["metric"]["config"]
    up = prometheus.query_range(f"sweep_up{sel}", start, end)
    assert max(finite_values(up)) == 1 and float(up[0]["values"][-1][1]) == 0  # the final state was scraped

    # The alert rules load and evaluate against these series without errors.
    groups = prometheus.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} == {"SweepTrialStalled", "SweepTrialErrorRateHigh", "SweepDown"}
    assert all(r["health"] == "ok" for r in rules), rules

    # The sweep removed its scrape targets when it ended.
    assert not list(Path(os.environ["SWEEP_PROMETHEUS_TARGETS"]).glob("*.json"))


@pytest.mark.slow
def test_per_trial_label_values_stay_within_the_documented_bound_in_a_real_sweep(ray_local, make_spec):
    """8 trials, at most 2 running at once (2 CPUs), keep_finished=2: never more than 4 trial label
    values, and at the end only the 2 best finished trials keep their series."""
    from ray.tune import Callback

    from trainer.driver.metrics import FINISHED, SweepMetrics
    from trainer.driver.sweep import run_sweep

    spec = make_spec(
        name="cardinality",
        train={"epochs": 1, "optimizer": {"lr": {"grid": [3e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 1e-5, 1e-6]}}},
    )
    keep = 2
    metrics = SweepMetrics(spec.name, keep_finished=keep)
    seen: list[tuple[int, int]] = []  # (trial label values, of which finished) after every event

    def trial_labels() -> set[str]:
        return {s.labels["trial"] for family in metrics.registry.collect() for s in family.samples if "trial" in s.labels}

    class Probe(Callback):  # runs after the driver's callback, so it sees the registry as scraped
        def _probe(self, *args, **kwargs):
            labels = trial_labels()
            seen.append((len(labels), sum(metrics.state(t) in FINISHED for t in labels)))

        on_trial_start = on_trial_result = on_trial_complete = on_trial_error = _probe

        def __reduce__(self):  # Tune pickles callbacks into tuner.pkl: that copy needs no probe
            return (Callback, ())

    index = run_sweep(spec, echo=lambda line: None, metrics=metrics, callbacks=[Probe()])
    assert index.trial_states == {"terminated": 8}
    assert seen and max(n for n, _ in seen) <= 2 + keep < 8  # running (≤ 2 CPUs) + kept finished
    assert max(finished for _, finished in seen) <= keep
    kept = trial_labels()
    assert len(kept) == keep
    best = {t.trial_id: t.best.val_acc for t in index.trials}
    dropped = set(best) - kept
    assert min(best[t] for t in kept) >= max(best[t] for t in dropped)  # the best ones stay visible


@pytest.mark.slow
def test_pbt_exploits_and_pauses_are_counted_as_in_the_record(ray_local, make_spec):
    """PBT pauses trials and restarts them from a better trial's checkpoint: the exporter counts
    the exploits the trials' records hold, and its final states match the sweep index's."""
    from service.core.record import SweepStore
    from trainer.driver.metrics import SweepMetrics
    from trainer.driver.sweep import run_sweep

    spec = make_spec(
        name="pbt-metrics",
        model={"name": "mlp", "hidden_sizes": [32]},
        # Two starts, far apart (a grid over a mutated value is refused: PBT would change it).
        train={"epochs": 4, "optimizer": {"name": "sgd", "lr": {"choice": [1e-4, 3e-2]}}},
        search={"algorithm": "random", "num_samples": 2},
        scheduler={"name": "pbt", "perturbation_interval": 1, "quantile": 0.5,
                   "mutations": {"train.optimizer.lr": {"loguniform": [1e-3, 1e-1]}}},
        checkpoint={"keep": None},  # PBT needs donors' checkpoints kept (Ray warns otherwise)
    )
    metrics = SweepMetrics(spec.name)
    index = run_sweep(spec, echo=lambda line: None, metrics=metrics)
    exploits = sum(len(t.exploits) for t in SweepStore(spec.storage.uri, spec.name).read_trials(index))
    assert exploits > 0
    families = {f.name: f for f in metrics.registry.collect()}
    (counted,) = [s.value for s in families["sweep_pbt_exploits"].samples if s.name == "sweep_pbt_exploits_total"]
    assert counted == exploits
    states = {s.labels["state"]: s.value for s in families["sweep_trials"].samples if s.value}
    assert states == index.trial_states
