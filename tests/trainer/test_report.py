"""The report's analyses (service/analysis/analyses.py, stats.py) on hand-written typed records (no
Ray, no training): the logic on fixed inputs, then that every figure renders and the page embeds
and links it, and that the README's screenshot matches its record and the current quickstart."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import BASE_SPEC, deep_update
from service.analysis import analyses, figures, report, stats
from service.cli import main as sweepctl
from service.core import storage
from service.core.record import EpochResult, Exploit, Objective, SweepIndex, SweepStore, TrialRecord, ranked
from service.core.spec import SweepSpec, num_trials

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]
N_VAL = 288  # the quickstart's validation split: 20 % of digits' 1,438 training images


# ----------------------------------------------------------------------------- synthetic records
def history(val_loss, train_loss, val_acc=None, train_acc=None, se=0.02, n=N_VAL) -> list[EpochResult]:
    """Epochs 1.. with these losses; ``se``: val_loss_se of every epoch (None: a record from before
    it was recorded); accuracies count whole images of ``n``."""
    count = len(val_loss)
    val_acc = val_acc or [round((0.5 + 0.01 * i) * n) / n for i in range(count)]
    train_acc = train_acc or [0.5 + 0.02 * i for i in range(count)]
    return [
        EpochResult(epoch=i + 1, val_loss=v, train_loss=t, val_acc=va, train_acc=ta, lr=1e-3,
                    val_samples=n if se is not None else None, val_loss_se=se)
        for i, (v, t, va, ta) in enumerate(zip(val_loss, train_loss, val_acc, train_acc))
    ]


def trial(trial_id, config, hist, status="terminated", metric="val_acc", mode="max", **extra) -> TrialRecord:
    return TrialRecord(trial_id=trial_id, config=config, status=status, epochs=hist[-1].epoch if hist else 0,
                       seconds=1.5 * len(hist), history=hist,
                       best=Objective(metric=metric, mode=mode).best_epoch(hist), **extra)


def sweep_of(trials, max_epochs, metric="val_acc", mode="max", wall=10.0) -> tuple[SweepIndex, list[TrialRecord]]:
    """The index a driver would have written for these trial records."""
    objective = Objective(metric=metric, mode=mode)
    order = ranked(trials, objective)
    states: dict = {}
    for t in trials:
        states[t.status] = states.get(t.status, 0) + 1
    index = SweepIndex(sweep="synthetic", status="finished", objective=objective, max_epochs=max_epochs,
                       num_trials=len(trials), trial_states=states, started_at="2026-01-01T00:00:00+00:00",
                       updated_at="2026-01-01T00:01:00+00:00", wall_seconds=wall,
                       best_trial=order[0].trial_id if order else None, trials=[t.summary() for t in trials])
    return index, trials


def curve(acc: float, epochs: int) -> list[EpochResult]:
    """A healthy history that ends at val_acc = acc."""
    return history(
        [1.0 / (e + 1) for e in range(epochs)], [1.2 / (e + 1) for e in range(epochs)],
        val_acc=[acc - 0.01 * (epochs - 1 - e) for e in range(epochs)],
        train_acc=[acc - 0.02 * (epochs - 1 - e) for e in range(epochs)],
    )


def grid_trials() -> list[TrialRecord]:
    """3 filters × 2 lr × 2 dropout, one trial errored before reporting: objective known per cell."""
    trials, rng = [], np.random.default_rng(0)
    i = 0
    for filters in (8, 16, 32):
        for lr in (1e-3, 3e-3):
            for dropout in (0.0, 0.5):
                i += 1
                config = {"model.filters": filters, "train.optimizer.lr": lr, "model.dropout": dropout}
                if i == 5:
                    trials.append(trial(f"t{i:02d}", config, [], status="error"))
                    continue
                trials.append(trial(f"t{i:02d}", config, curve(float(rng.uniform(0.6, 0.95)), 3)))
    return trials


def grid_sweep() -> tuple[SweepIndex, list[TrialRecord]]:
    return sweep_of(grid_trials(), max_epochs=3)


def spec_yaml(**changes) -> str:
    """A resolved spec as the driver stores it (spec.yaml), for the parts the report reads."""
    spec = SweepSpec.model_validate(deep_update(BASE_SPEC, {"name": "synthetic", **changes}))
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------- the noise scale
def test_the_standard_error_of_an_accuracy_is_binomial():
    p, n = 0.9722, 288
    assert stats.binomial_se(p, n) == pytest.approx(math.sqrt(p * (1 - p) / n), rel=1e-12)
    assert stats.binomial_se(p, n) == pytest.approx(0.009687, abs=1e-6)  # almost 3 of the 288 images (1 is 0.0035)
    entry = EpochResult(epoch=8, val_acc=p, val_samples=n, val_loss=0.1, val_loss_se=0.03)
    assert stats.metric_se(entry, "val_acc") == stats.binomial_se(p, n)
    assert stats.metric_se(entry, "val_loss") == 0.03
    assert stats.metric_se(entry, "train_acc") is None  # a mean over a changing model: no binomial SE
    assert stats.metric_se(EpochResult(epoch=1, val_acc=p), "val_acc") is None  # an old record: no n
    lo, hi = stats.wilson_interval(p, n)
    assert lo < p < hi and hi - lo == pytest.approx(2 * 1.96 * stats.binomial_se(p, n), rel=0.05)
    assert stats.wilson_interval(1.0, n)[0] < 1.0 == stats.wilson_interval(1.0, n)[1]  # not zero-width at p = 1


def leaderboard_trials(correct: list[int], n: int = N_VAL) -> list[TrialRecord]:
    return [trial(f"k{k}", {"train.optimizer.lr": 1e-3 * (i + 1)},
                  history([0.5], [0.5], val_acc=[k / n], n=n)) for i, k in enumerate(correct)]


def test_the_indistinguishable_set_on_a_constructed_leaderboard():
    # Images right of 288: differences of 1, 4 and 8 images are within 2 SE of the difference
    # (sqrt(SE² + SE_best²)); 12 and 18 images are not. The 8-image one would not be with 2·SE_best alone.
    correct = [280, 279, 276, 272, 268, 262]
    index, trials = sweep_of(leaderboard_trials(correct), max_epochs=1)
    rows, ties = analyses.leaderboard_rows(index, trials, top=10)
    best = 280 / N_VAL
    expected = []
    for k in correct:
        p = k / N_VAL
        se_diff = math.sqrt(stats.binomial_se(p, N_VAL) ** 2 + stats.binomial_se(best, N_VAL) ** 2)
        if abs(p - best) <= 2 * se_diff:
            expected.append(f"k{k}")
    assert expected == ["k280", "k279", "k276", "k272"]
    assert ties["members"] == expected and ties["best"] == "k280"
    assert [r["trial_id"] for r in rows if r["tie"]] == expected
    assert (8 / N_VAL) > 2 * stats.binomial_se(best, N_VAL)  # the simpler rule would have split k272 off
    assert rows[0]["val_acc_se"] == pytest.approx(stats.binomial_se(best, N_VAL))
    assert rows[0]["val_acc_ci95"] == pytest.approx(list(stats.wilson_interval(best, N_VAL)))

    # a minimized objective: the val loss and its recorded SE
    low = [trial(f"m{i}", {"x": i}, history([loss], [0.5], se=se), metric="val_loss", mode="min")
           for i, (loss, se) in enumerate([(0.30, 0.02), (0.33, 0.02), (0.40, 0.02)])]
    _, ties = analyses.leaderboard_rows(*sweep_of(low, 1, metric="val_loss", mode="min"))
    assert ties["members"] == ["m0", "m1"]  # 0.03 ≤ 2·0.028; 0.10 is not
    # a record without the SE: nothing is claimed either way
    _, ties = analyses.leaderboard_rows(*sweep_of([trial("a", {"x": 1}, history([0.5], [0.5], se=None))], 1))
    assert ties["members"] is None and ties["note"]


def test_repeats_of_one_config_get_their_mean_and_spread():
    runs = [trial(f"r{i}", {"model.filters": 8}, history([0.5], [0.5], val_acc=[a])) for i, a in enumerate([0.9, 0.92, 0.94])]
    other = trial("o", {"model.filters": 16}, history([0.5], [0.5], val_acc=[0.8]))
    (group,) = stats.replicate_groups(runs + [other], "val_acc")
    assert group["config"] == {"model.filters": 8} and group["n"] == 3 and group["trial_ids"] == ["r0", "r1", "r2"]
    assert group["mean"] == pytest.approx(0.92) and group["std"] == pytest.approx(0.02)
    assert (group["min"], group["max"]) == (0.9, 0.94)


# ----------------------------------------------------------------------------- overfitting
FALLING = [1.1, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2]  # a train loss that keeps falling


def test_overfitting_flags_a_val_loss_rising_beyond_its_noise_while_train_loss_falls():
    overfits = history(val_loss=[1.0, 0.7, 0.5, 0.56, 0.62, 0.7], train_loss=FALLING[:6], se=0.02)
    flag = stats.detect_overfitting(overfits, min_epochs=2, k=2)
    assert flag["overfitting"] and flag["min_val_loss_epoch"] == 3
    assert (flag["start_epoch"], flag["epochs"]) == (4, 3)
    assert flag["rise"] == pytest.approx(0.2) and flag["se"] == 0.02
    assert stats.detect_overfitting(overfits, min_epochs=3)["overfitting"]
    assert not stats.detect_overfitting(overfits, min_epochs=4)["overfitting"]
    # the rises are 3, 6 and 10 SE: a larger k starts the run later, or finds none long enough
    assert (stats.detect_overfitting(overfits, k=4)["start_epoch"], stats.detect_overfitting(overfits, k=4)["epochs"]) == (5, 2)
    assert not stats.detect_overfitting(overfits, k=7)["overfitting"]


@pytest.mark.parametrize("case,val_loss", [
    ("healthy", [1.0, 0.7, 0.6, 0.55, 0.5, 0.47]),
    # spikes above 2 SE, each followed by a new minimum: noise the old rule flagged (4, 5 rose)
    ("noisy", [1.0, 0.7, 0.5, 0.56, 0.6, 0.48, 0.53, 0.47]),
    # rising for 4 epochs in a row while train falls, by less than 1 SE in all: within the noise
    ("noisy within 1 SE", [1.0, 0.7, 0.5, 0.505, 0.51, 0.515, 0.519]),
])
def test_overfitting_stays_quiet_on_healthy_and_noisy_curves(case, val_loss):
    h = history(val_loss=val_loss, train_loss=FALLING[:len(val_loss)], se=0.02)
    for k in (1.0, stats.OVERFIT_K):
        flag = stats.detect_overfitting(h, min_epochs=2, k=k)
        assert not flag["overfitting"] and flag["note"] is None, (case, k)
    assert stats.detect_overfitting(h)["min_val_loss_epoch"] == 1 + int(np.argmin(val_loss))
    if case == "noisy within 1 SE":  # what the old rule (strict rises while train falls) flagged
        assert all(b > a for a, b in zip(val_loss[2:], val_loss[3:]))
        flag = stats.detect_overfitting(h)  # shown, not flagged: where the last epoch stands
        assert flag["last_rise"] == pytest.approx(0.019) and flag["last_rise_in_se"] == pytest.approx(0.95)


def test_overfitting_is_neither_a_diverging_run_nor_claimed_without_a_noise_scale():
    diverging = history(val_loss=[1.0, 0.7, 0.9, 1.2], train_loss=[1.1, 0.8, 1.0, 1.3])  # lr too high: both rise
    assert not stats.detect_overfitting(diverging)["overfitting"]
    old = history(val_loss=[1.0, 0.5, 0.8, 1.2], train_loss=FALLING[:4], se=None)
    flag = stats.detect_overfitting(old)
    assert not flag["overfitting"] and "not assessed" in flag["note"] and flag["min_val_loss_epoch"] == 2
    assert stats.detect_overfitting([])["note"]


# ----------------------------------------------------------------------------- equal budget
ASHA = {"name": "asha", "grace_period": 2, "reduction_factor": 2}  # 8 epochs: rungs 2 and 4


def asha_trials() -> list[TrialRecord]:
    """A finished trial that starts slow and ends best; trials cut at rungs 2 and 4; one failed
    after 1 epoch. At epoch 2 the order differs from the best-epoch order."""
    def run(accs):
        return history([1.0 - a for a in accs], FALLING[:len(accs)], val_acc=accs)
    return [
        trial("slow", {"train.optimizer.lr": 1e-4, "model.filters": 8}, run([0.3, 0.5, 0.7, 0.8, 0.9, 0.92, 0.95, 0.97])),
        trial("mid", {"train.optimizer.lr": 1e-3, "model.filters": 8}, run([0.5, 0.7, 0.8, 0.85]), status="stopped_early"),
        trial("fast", {"train.optimizer.lr": 1e-2, "model.filters": 16}, run([0.6, 0.8]), status="stopped_early"),
        trial("weak", {"train.optimizer.lr": 1e-5, "model.filters": 16}, run([0.1, 0.2]), status="stopped_early"),
        trial("broken", {"train.optimizer.lr": 1e-1, "model.filters": 8}, run([0.1]), status="error"),
    ]


def test_the_equal_budget_objective_of_an_asha_sweep_is_the_shared_rung():
    index, trials = sweep_of(asha_trials(), max_epochs=8)
    budget = analyses.comparison_budget(index, trials, ASHA)
    assert (budget["mode"], budget["epoch"]) == ("rung", 2)  # cut trials stopped at 2: the last rung all reached
    assert budget["scores"] == {"slow": 0.5, "mid": 0.7, "fast": 0.8, "weak": 0.2}
    assert list(budget["left_out"]) == ["broken"]  # failed after epoch 1: no epoch 2
    # the values the scheduler compared at that rung
    (rung2,) = [r for r in analyses.rung_decisions(index, trials, ASHA)["rungs"] if r["epoch"] == 2]
    assert {t: v for t, v in rung2["values"].items() if t in budget["scores"]} == budget["scores"]
    # the heatmap averages those, not the best epochs (where 'slow' would win with 0.97)
    table = analyses.heatmap_table(index, trials, "model.filters", "train.optimizer.lr", budget["scores"], budget["label"])
    assert table["label"] == "val_acc at epoch 2"
    assert table["mean"][table["y_values"].index(1e-4)][table["x_values"].index(8)] == 0.5
    imp = analyses.parameter_importance(index, trials, scores=budget["scores"])
    assert imp["n_trials"] == 4

    at4 = analyses.comparison_budget(index, trials, ASHA, 4)
    assert (at4["mode"], at4["scores"]) == ("epoch", {"slow": 0.8, "mid": 0.85})
    best = analyses.comparison_budget(index, trials, ASHA, "best")
    assert best["mode"] == "best" and best["scores"]["slow"] == 0.97 and best["scores"]["broken"] == 0.1
    with pytest.raises(analyses.AnalysisError, match="no trial has a val_acc at epoch 9"):
        analyses.comparison_budget(index, trials, ASHA, 9)
    # no rungs (FIFO): the last epoch every finished trial ran; a running trial does not pull it down
    fifo = [trial("a", {"x": 1}, curve(0.9, 3)), trial("b", {"x": 2}, curve(0.8, 3)),
            trial("c", {"x": 3}, curve(0.5, 1), status="running")]
    plain = analyses.comparison_budget(*sweep_of(fifo, 3), {"name": "fifo"})
    assert (plain["mode"], plain["epoch"], list(plain["left_out"])) == ("common", 3, ["c"])


# ----------------------------------------------------------------------------- importance
def continuous_sweep(n: int, seed: int = 0) -> tuple[tuple[SweepIndex, list[TrialRecord]], SweepSpec]:
    """A random sweep: lr loguniform (drives the objective through log10 lr), dropout uniform (a
    little), filters a doubling grid (nothing)."""
    spec = SweepSpec.model_validate(deep_update(BASE_SPEC, {
        "name": "synthetic", "search": {"algorithm": "random", "num_samples": n},
        "model": {"filters": {"grid": [8, 16, 32]}, "dropout": {"uniform": [0.0, 0.5]}},
        "train": {"optimizer": {"lr": {"loguniform": [1e-4, 1e-1]}}}}))
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        lr, dropout, filters = 10 ** rng.uniform(-4, -1), rng.uniform(0, 0.5), int(rng.choice([8, 16, 32]))
        acc = 0.9 - 0.05 * (math.log10(lr) + 2.5) ** 2 - 0.1 * dropout + rng.normal(0, 0.005)
        trials.append(trial(f"r{i:02d}", {"model.filters": filters, "model.dropout": dropout,
                                          "train.optimizer.lr": lr}, curve(acc, 2)))
    return sweep_of(trials, 2), spec


def optuna_study(trials, distributions, transform=lambda p, v: v):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for t in trials:
        study.add_trial(optuna.trial.create_trial(
            params={p: transform(p, t.config[p]) for p in distributions}, distributions=distributions,
            value=t.best.val_acc))
    return study


def test_the_fanova_ranking_is_optunas_on_the_same_trials():
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    (index, trials), spec = continuous_sweep(40)
    ours = analyses.parameter_importance(index, trials, spec=spec)
    assert ours["caveat"] is None and ours["note"] is None  # 40 trials ≥ 10 × 3 parameters
    assert ours["scales"]["train.optimizer.lr"].startswith("log10 over [0.0001, 0.1]")
    assert ours["scales"]["model.dropout"].startswith("linear [0, 0.5]")
    ranking = sorted(ours["params"], key=ours["params"].get, reverse=True)
    assert ranking[0] == "train.optimizer.lr"

    # Optuna on the same trials with the spec's distributions, natively (log=True): the same ranking
    native = {"model.filters": IntDistribution(8, 32, log=True), "model.dropout": FloatDistribution(0.0, 0.5),
              "train.optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True)}
    theirs = optuna.importance.FanovaImportanceEvaluator(seed=0).evaluate(optuna_study(trials, native))
    assert sorted(theirs, key=theirs.get, reverse=True) == ranking
    # ... and the very numbers, once log-scaled parameters are given as log10 (what Optuna's evaluator
    # ignores log=True for, and the one thing we do ourselves)
    logged = {"model.filters": FloatDistribution(math.log10(8), math.log10(32)), "model.dropout": FloatDistribution(0.0, 0.5),
              "train.optimizer.lr": FloatDistribution(-4.0, -1.0)}
    exact = optuna.importance.FanovaImportanceEvaluator(seed=0).evaluate(optuna_study(
        trials, logged, lambda p, v: math.log10(v) if p != "model.dropout" else v))
    assert ours["params"] == pytest.approx(exact)

    few = analyses.parameter_importance(*continuous_sweep(12)[0], spec=spec)
    assert "12 trials for 3 parameters" in few["caveat"]
    assert analyses.parameter_importance(*sweep_of(trials[:2], 2))["note"]  # too few to fit anything


def test_importance_finds_the_parameter_that_drives_the_objective_of_a_grid():
    trials = []
    for i, (lr, filters) in enumerate((lr, f) for lr in (1e-4, 1e-3, 1e-2) for f in (8, 16, 32)):
        acc = {1e-4: 0.5, 1e-3: 0.8, 1e-2: 0.95}[lr] + (0.001 if filters == 16 else 0.0)
        trials.append(trial(f"t{i}", {"train.optimizer.lr": lr, "model.filters": filters}, curve(acc, 2)))
    imp = analyses.parameter_importance(*sweep_of(trials, 2))
    assert imp["params"]["train.optimizer.lr"] > 0.8 and imp["params"]["model.filters"] < 0.05
    assert imp["scales"]["train.optimizer.lr"].startswith("log10")  # a grid evenly spaced in log
    assert "FanovaImportanceEvaluator" in imp["method"] and imp["own_code"]
    assert analyses.parameter_importance(*sweep_of(trials, 2)) == imp  # seeded: the same numbers every time


def test_parameters_of_one_branch_are_listed_not_ranked_and_compared_among_the_trials_that_have_them():
    """A conditional space (SGD with lr and momentum, Adam with lr only): momentum is absent from
    the Adam trials. Importance ranks what every trial has (the branch's name: it drives the
    objective here); the heatmap and the scatter of lr × momentum use the SGD trials."""
    data = deep_update(BASE_SPEC, {"name": "synthetic", "search": {"algorithm": "random", "num_samples": 24}})
    data["train"]["optimizer"] = {"choice": [
        {"name": "sgd", "lr": {"loguniform": [1e-3, 1e-1]}, "momentum": {"uniform": [0.8, 0.99]}},
        {"name": "adam", "lr": {"loguniform": [1e-4, 1e-2]}}]}
    spec = SweepSpec.model_validate(data)
    rng = np.random.default_rng(0)
    trials = []
    for i in range(24):
        if i % 2:
            config = {"train.optimizer.name": "adam", "train.optimizer.lr": float(10 ** rng.uniform(-4, -2))}
        else:
            config = {"train.optimizer.name": "sgd", "train.optimizer.lr": float(10 ** rng.uniform(-3, -1)),
                      "train.optimizer.momentum": float(rng.uniform(0.8, 0.99))}
        acc = (0.9 if i % 2 else 0.6) + rng.normal(0, 0.005)
        trials.append(trial(f"c{i:02d}", config, curve(acc, 2)))
    index, _ = sweep_of(trials, 2)
    assert analyses.varied_params(trials) == ["train.optimizer.name", "train.optimizer.lr", "train.optimizer.momentum"]
    imp = analyses.parameter_importance(index, trials, spec=spec)
    assert imp["n_trials"] == 24 and set(imp["params"]) == {"train.optimizer.name", "train.optimizer.lr"}
    assert imp["absent"] == {"train.optimizer.momentum": 12} and "train.optimizer.momentum (12 of 24)" in imp["absent_note"]
    assert max(imp["params"], key=imp["params"].get) == "train.optimizer.name"
    # lr: one loguniform over both branches' bounds
    assert imp["scales"]["train.optimizer.lr"].startswith("log10 over [0.0001, 0.1] (loguniform)")

    scores = {t.trial_id: t.best.val_acc for t in trials}
    assert analyses.heatmap_axes(spec, trials, imp, scores) == ("train.optimizer.name", "train.optimizer.lr")
    table = analyses.heatmap(index, trials, spec, "train.optimizer.lr", "train.optimizer.momentum", scores, "x")
    assert table["kind"] == "scatter" and table["x_log"]
    assert sorted(p["trial_id"] for p in table["points"]) == [f"c{i:02d}" for i in range(0, 24, 2)]  # SGD's
    labels = analyses.config_labels(trials[:2], analyses.short_names(analyses.varied_params(trials)))
    assert "momentum=" in labels["c00"] and "momentum" not in labels["c01"]
    assert is_png(figures.fig_parallel(index, trials, {}, scores))
    only_sgd = [t for t in trials if "train.optimizer.momentum" in t.config]  # momentum alone is absent nowhere
    assert analyses.heatmap_axes(spec, only_sgd, imp, scores) == ("train.optimizer.lr", "train.optimizer.momentum")


# ----------------------------------------------------------------------------- leaderboard, heatmap
def test_leaderboard_rows_are_the_record_numbers_best_first():
    index, trials = grid_sweep()
    rows, _ = analyses.leaderboard_rows(index, trials, top=5)
    by_id = {t.trial_id: t for t in trials}
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["trial_id"] == index.best_trial
    assert [r["trial_id"] for r in rows] == [t.trial_id for t in index.ranked()[:5]]  # the one ranking
    for r in rows:
        t = by_id[r["trial_id"]]
        assert r["params"] == t.config
        for k in ("val_acc", "val_loss", "train_acc", "train_loss"):
            assert r[k] == getattr(t.best, k)
        assert (r["best_epoch"], r["epochs"], r["seconds"], r["status"]) == (t.best.epoch, t.epochs, t.seconds, t.status)
        assert r["val_acc_se"] == pytest.approx(stats.binomial_se(t.best.val_acc, N_VAL))


def test_heatmap_cells_are_the_mean_objective_of_the_matching_trials():
    index, trials = grid_sweep()
    table = analyses.heatmap_table(index, trials, "model.filters", "train.optimizer.lr")
    assert table["x_values"] == [8, 16, 32] and table["y_values"] == [1e-3, 3e-3]
    for i, lr in enumerate(table["y_values"]):
        for j, filters in enumerate(table["x_values"]):
            matching = [t.best.val_acc for t in trials
                        if t.best and t.config["model.filters"] == filters and t.config["train.optimizer.lr"] == lr]
            assert table["count"][i][j] == len(matching)
            assert table["mean"][i][j] == pytest.approx(np.mean(matching))
    assert table["count"][0][1] == 1  # the errored trial (t05: filters 16, lr 1e-3) leaves one in its cell
    kept = [t for t in grid_trials() if not (t.config["model.filters"] == 32 and t.config["train.optimizer.lr"] == 3e-3)]
    table = analyses.heatmap_table(*sweep_of(kept, 3), "model.filters", "train.optimizer.lr")
    assert table["mean"][1][2] is None and table["count"][1][2] == 0
    assert analyses.resolve_param(trials, "lr") == "train.optimizer.lr"
    with pytest.raises(analyses.AnalysisError, match="varied parameters"):
        analyses.resolve_param(trials, "momentum")


def test_the_heatmap_defaults_to_the_two_most_important_parameters_and_continuous_ones_get_a_scatter():
    trials = grid_trials()  # the objective: lr and dropout matter, filters does not
    for t in trials:
        if t.history:
            acc = 0.6 + 0.3 * (t.config["train.optimizer.lr"] == 3e-3) + 0.05 * (t.config["model.dropout"] == 0.5)
            t.history = curve(acc + 0.001 * (t.config["model.filters"] == 16), 3)
            t.best = Objective(metric="val_acc", mode="max").best_epoch(t.history)
    index, _ = sweep_of(trials, 3)
    budget = analyses.comparison_budget(index, trials, None)
    imp = analyses.parameter_importance(index, trials, scores=budget["scores"])
    assert analyses.heatmap_axes(None, trials, imp, budget["scores"]) == ("train.optimizer.lr", "model.dropout")
    assert analyses.heatmap(index, trials, None, "train.optimizer.lr", "model.dropout", budget["scores"], "x")["kind"] == "grid"

    (index, trials), spec = continuous_sweep(12)
    budget = analyses.comparison_budget(index, trials, None)
    imp = analyses.parameter_importance(index, trials, spec=spec, scores=budget["scores"])
    x, y = analyses.heatmap_axes(spec, trials, imp, budget["scores"])
    assert {x, y} == {"train.optimizer.lr", "model.dropout"}
    table = analyses.heatmap(index, trials, spec, x, y, budget["scores"], budget["label"])
    assert table["kind"] == "scatter" and len(table["points"]) == 12
    assert table["x_log" if x == "train.optimizer.lr" else "y_log"] and not table["y_log" if x == "train.optimizer.lr" else "x_log"]
    assert is_png(figures.fig_scatter(table, {}, "max"))


def test_a_choice_of_lists_beside_a_continuous_parameter_is_scattered_at_its_values_positions():
    """A continuous lr against a choice of hidden sizes (lists): the scatter puts each list at a
    position of its own and names it on the axis (it used to fail converting a list to a float)."""
    widths = [[64], [128, 64], [256, 128]]
    trials = [trial(f"t{k}", {"train.optimizer.lr": 10 ** (-4 + k / 4), "model.hidden_sizes": widths[k % 3]},
                    curve(0.7 + 0.02 * k, 2)) for k in range(9)]
    index, _ = sweep_of(trials, 2)
    scores = {t.trial_id: t.best.val_acc for t in trials}
    table = analyses.scatter_table(index, trials, "train.optimizer.lr", "model.hidden_sizes", scores, "val_acc", x_log=True)
    assert table["y_categories"] == sorted(widths, key=analyses.sort_key) and "x_categories" not in table
    for point, t in zip(table["points"], trials):
        assert table["y_categories"][point["y"]] == t.config["model.hidden_sizes"]
        assert point["x"] == t.config["train.optimizer.lr"]
    assert is_png(figures.fig_scatter(table, {}, "max"))


def test_no_heatmap_crash_when_its_parameters_are_absent_from_the_scored_trials(tmp_path):
    trials = grid_trials()
    for t in trials:
        if t.history:  # only the errored, unscored trial keeps dropout in its config
            t.config = {k: v for k, v in t.config.items() if k != "model.dropout"}
    index, _ = sweep_of(trials, 3)
    assert analyses.heatmap(index, trials, None, "model.filters", "model.dropout", {"t01": 0.5}, "x") is None
    write_sweep(tmp_path, (index, trials))
    out = tmp_path / "out"
    assert sweepctl(["report", "synthetic", "--storage", str(tmp_path), "-o", str(out),
                     "--heatmap", "filters", "dropout"]) == 0
    assert "No heatmap" in (out / "report.html").read_text() and not (out / "heatmap.png").exists()


# ----------------------------------------------------------------------------- compute
def test_compute_is_split_by_phase_so_trial_seconds_compare():
    def timed(trial_id, start, epochs=4, started="2026-01-01T00:00:06+00:00"):
        h = curve(0.9, epochs)
        for e in h:
            e.epoch_seconds, e.checkpoint_seconds = 0.5, 0.05
        t = trial(trial_id, {"x": trial_id}, h, started_at=started)
        t.seconds = epochs * 0.55 + start
        return t
    # two cold workers pay ~12 s of start-up in their first trial; the other trials start in 0.1 s
    trials = [timed("a", 12.1, started="2026-01-01T00:00:04+00:00"), timed("b", 11.9), timed("c", 0.1),
              timed("d", 0.1), timed("e", 0.1, epochs=2), trial("f", {"x": "f"}, [], status="error")]
    acct = analyses.compute_accounting(*sweep_of(trials, max_epochs=4, wall=30.0))
    assert acct["epochs_run"] == 4 * 4 + 2 and acct["epochs_saved"] == 6 * 4 - 18
    rows = {r["trial_id"]: r for r in acct["per_trial"]}
    assert rows["a"]["training"] == pytest.approx(2.0) and rows["a"]["checkpoints"] == pytest.approx(0.2)
    assert acct["typical_trial_start"] == pytest.approx(0.1)
    assert rows["a"]["worker_startup"] == pytest.approx(12.0) and rows["b"]["worker_startup"] == pytest.approx(11.8)
    assert rows["c"]["worker_startup"] == 0 and rows["a"]["comparable"] == pytest.approx(rows["c"]["seconds"])
    phases = acct["phases"]
    assert phases["cluster_startup"] == 4.0  # record start 00:00:00 → first trial 00:00:04
    assert phases["training"] + phases["checkpoints"] + phases["trial_start"] + phases["worker_startup"] == \
        pytest.approx(acct["trial_seconds"])
    assert acct["seconds_per_epoch"] == pytest.approx(0.55)  # warm: no start-up in it
    assert is_png(figures.fig_compute(acct))


# ----------------------------------------------------------------------------- curves
def test_curves_are_labelled_by_what_differs_and_say_why_each_stopped():
    index, trials = sweep_of(asha_trials(), max_epochs=8)
    names = analyses.short_names(analyses.varied_params(trials))
    labels = analyses.config_labels(trials[:2], names)
    assert labels == {"slow": "lr=0.0001", "mid": "lr=0.001"}  # filters is 8 for both: not a label
    trials[0].exploits = [Exploit(epoch=4, donor="mid")]
    stops = analyses.trial_stops(trials, analyses.rung_decisions(index, trials, ASHA))
    assert {t: s["reason"] for t, s in stops.items()} == {
        "slow": "finished", "mid": "rung", "fast": "rung", "weak": "rung", "broken": "error"}
    assert stops["mid"]["text"] == "cut at rung 4" and stops["slow"]["exploits"] == [{"epoch": 4, "donor": "mid"}]
    overfit = {t.trial_id: stats.detect_overfitting(t.history) for t in trials}
    ranks = {t.trial_id: i for i, t in enumerate(ranked(trials, index.objective), 1)}
    assert is_png(figures.fig_curves(trials, analyses.config_labels(trials, names), stops, overfit, ranks))
    assert is_png(figures.fig_learning_curves(trials, overfit, "val_acc", labels, stops))


# ----------------------------------------------------------------------------- early stopping
def test_rung_milestones_match_ray_tune_asha():
    from ray.tune.schedulers.async_hyperband import _Bracket

    for grace, rf, max_t, brackets in ((1, 2, 8, 1), (2, 2, 8, 1), (1, 3, 9, 1), (1, 2, 8, 2), (1, 1.5, 5, 1)):
        ours = analyses.rung_milestones(
            {"name": "asha", "grace_period": grace, "reduction_factor": rf, "brackets": brackets}, max_t)
        ray = set()
        for s in range(brackets):
            ray |= {int(np.ceil(m)) for m, _ in _Bracket(grace, max_t, rf, s)._rungs}
        assert ours == sorted(m for m in ray if m < max_t)
    assert analyses.rung_milestones({"name": "asha", "grace_period": 2, "reduction_factor": 2}, 8) == [2, 4]
    assert analyses.rung_milestones({"name": "hyperband", "reduction_factor": 2}, 4) == [1, 2]
    assert analyses.rung_milestones({"name": "fifo"}, 8) == []


def test_rung_decisions_say_where_each_stopped_trial_was_cut():
    trials = [trial("a", {"lr": 1}, curve(0.9, 8)), trial("b", {"lr": 2}, curve(0.5, 2), status="stopped_early"),
              trial("c", {"lr": 3}, curve(0.7, 4), status="stopped_early"), trial("d", {"lr": 4}, curve(0.4, 2), status="stopped_early")]
    decisions = analyses.rung_decisions(*sweep_of(trials, 8), {"name": "asha", "grace_period": 2, "reduction_factor": 2})
    assert {t["trial_id"]: t["cut_at_rung"] for t in decisions["trials"]} == {"a": None, "b": 2, "c": 4, "d": 2}
    rungs = {r["epoch"]: r for r in decisions["rungs"]}
    assert (rungs[2]["reached"], rungs[2]["cut"], rungs[2]["continued"]) == (4, 2, 2)
    assert (rungs[4]["reached"], rungs[4]["cut"], rungs[4]["continued"]) == (2, 1, 1)
    assert rungs[2]["values"]["b"] == trials[1].history[1].val_acc


def test_pbt_lineage_edges_and_the_best_trials_ancestry():
    assert analyses.pbt_lineage(*grid_sweep()) is None  # no exploits recorded: no PBT
    a, b, c = (trial(x, {"lr": i}, curve(0.8 + 0.05 * i, 6)) for i, x in enumerate("abc"))
    b.exploits = [Exploit(epoch=2, donor="a", config={"lr": 0.01})]
    c.exploits = [Exploit(epoch=4, donor="b", config={"lr": 0.02})]
    lineage = analyses.pbt_lineage(*sweep_of([a, b, c], 6))
    assert lineage["best_trial"] == "c"
    assert [(e["trial_id"], e["donor"], e["epoch"]) for e in lineage["edges"]] == [("b", "a", 2), ("c", "b", 4)]
    assert lineage["best_ancestry"] == [
        {"trial_id": "c", "from_epoch": 4, "to_epoch": 6},
        {"trial_id": "b", "from_epoch": 2, "to_epoch": 4},
        {"trial_id": "a", "from_epoch": 0, "to_epoch": 2},
    ]
    assert is_png(figures.fig_pbt_lineage([a, b, c], lineage))


# ----------------------------------------------------------------------------- the page
def is_png(data: bytes, min_bytes: int = 5_000) -> bool:
    image = Image.open(io.BytesIO(data))
    image.verify()
    return data.startswith(PNG_SIGNATURE) and len(data) >= min_bytes and image.size[0] > 200


def write_sweep(root: Path, sweep: tuple[SweepIndex, list[TrialRecord]], spec_text: str | None = None) -> None:
    """The record as the driver leaves it in storage: one trial.json per trial, then the index."""
    index, trials = sweep
    store = SweepStore(str(root), index.sweep)
    for record in trials:
        storage.write_text_atomic(store.trial_record_uri(record.trial_id), record.model_dump_json())
    storage.write_text_atomic(store.index_uri, index.model_dump_json())
    if spec_text:
        storage.write_text_atomic(store.spec_uri, spec_text)


def test_a_fenced_out_driver_writes_no_report(tmp_path):
    """The driver's report (write_sweep_report) is drawn aside and copied into the sweep's storage
    only while the driver still owns the sweep: one that lost it to a newer attempt writes nothing."""
    write_sweep(tmp_path, grid_sweep())
    before = storage.file_sizes(str(tmp_path))
    assert report.write_sweep_report(str(tmp_path), "synthetic", fenced=lambda: True) is None
    assert storage.file_sizes(str(tmp_path)) == before


def test_report_writes_every_figure_embeds_and_links_it(tmp_path):
    from markupsafe import escape  # as the template escapes

    trials = grid_trials()
    trials[0].history = history([1.0, 0.8, 0.9], [1.0, 0.8, 0.6])  # val loss +0.1 > 2 SE from epoch 3 on
    trials[0].best = trials[0].history[1].model_copy(update={"val_acc": 0.99})
    sweep = sweep_of(trials, max_epochs=3)
    write_sweep(tmp_path, sweep)
    out = tmp_path / "out"
    assert sweepctl(["report", "synthetic", "--storage", str(tmp_path), "-o", str(out), "--top", "3",
                     "--heatmap", "filters", "lr", "--overfit-epochs", "1", "--small-multiples"]) == 0

    page = (out / "report.html").read_text()
    expected = {"leaderboard.png", "learning_curves.png", "learning_curves_grid.png", "heatmap.png",
                "parallel_coordinates.png", "importance.png", "early_stopping.png", "compute.png"}
    assert expected <= {p.name for p in out.glob("*.png")}
    for name in expected:
        data = (out / name).read_bytes()
        assert is_png(data), name
        assert f'href="{name}"' in page
        assert base64.b64encode(data).decode() in page  # embedded byte for byte: the page is self-contained
    assert "No PBT in this sweep" in page
    data = json.loads((out / "report.json").read_text())
    assert data["overfitting"]["t01"]["overfitting"] and data["overfitting"]["t01"]["min_val_loss_epoch"] == 2
    assert data["overfitting"]["t01"]["start_epoch"] == 3 and "after epoch 2" in page  # the flag reaches the page
    assert [r["trial_id"] for r in data["leaderboard"]] == [r["trial_id"] for r in analyses.leaderboard_rows(*sweep, 3)[0]]
    assert data["leaderboard"][0]["trial_id"] == "t01" and f"<td>{0.99:.4f} ± " in page  # the record's best epoch, ± SE
    assert data["heatmap"]["x_param"] == "model.filters" and data["heatmap"]["y_param"] == "train.optimizer.lr"
    for rule in (stats.SE_RULE, stats.INDISTINGUISHABLE_RULE, report.overfit_rule(1, stats.OVERFIT_K)):
        assert escape(rule) in page  # every rule the page applies, stated on it
    assert data["budget"]["label"] == "val_acc at epoch 3" and "val_acc at epoch 3" in page  # no rungs: the last common epoch
    assert data["cards"] == analyses.cards(sweep[0]) and data["options"]["small_multiples"] is True


def test_report_compares_at_the_shared_rung_and_draws_the_top_parameters(tmp_path):
    index, trials = sweep_of(asha_trials(), max_epochs=8)
    write_sweep(tmp_path, (index, trials), spec_yaml(train={"epochs": 8}, scheduler=ASHA))
    report.generate_report(str(tmp_path), "synthetic", tmp_path / "out")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["budget"]["epoch"] == 2 and data["budget"]["mode"] == "rung"
    assert data["heatmap"]["label"] == "val_acc at epoch 2"
    ranking = sorted(data["importance"]["params"], key=data["importance"]["params"].get, reverse=True)
    assert {data["heatmap"]["x_param"], data["heatmap"]["y_param"]} == set(ranking[:2])
    assert data["importance"]["caveat"]  # 4 trials for 2 parameters
    page = (tmp_path / "out" / "report.html").read_text()
    assert "the last asha rung that every compared trial" in page and "broken" in page  # and who was left out


# ----------------------------------------------------------------------------- the README's screenshot
def test_the_readme_screenshot_shows_the_current_quickstart_and_its_cards_match_its_record():
    """docs/report.png is `make report-screenshot`'s shot of the quickstart's report; beside it,
    docs/report-record.json keeps that sweep's record and the cards as its page showed them."""
    kept = json.loads((REPO / "docs" / "report-record.json").read_text())
    quickstart = SweepSpec.model_validate(yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text()))
    # The kept spec as this version reads it (one written before the data and scheduler unions
    # held every dataset's and scheduler's defaults: it validates to the same spec).
    kept_spec = SweepSpec.model_validate({**kept["spec"], "storage": quickstart.storage.model_dump()})
    assert kept_spec == quickstart, "sweeps/quickstart.yaml changed: run `make report-screenshot`"
    index = SweepIndex.model_validate(kept["index"])
    assert kept["cards"] == analyses.cards(index, kept.get("evaluation")), "run `make report-screenshot`"
    cards = {c["label"]: c for c in kept["cards"]}
    run, budget = sum(t.epochs for t in index.trials), index.max_epochs * len(index.trials)
    assert cards["epochs saved"]["value"] == f"{budget - run} / {budget}"  # the record's numbers, independently
    assert cards["trials"]["value"] == str(len(index.trials)) == str(num_trials(quickstart))
    best = index.best.best
    assert cards["best val_acc"]["value"] == f"{best.val_acc:.4f} ± {math.sqrt(best.val_acc * (1 - best.val_acc) / best.val_samples):.4f}"
    assert cards["wall time"]["value"] == f"{index.wall_seconds:.1f} s"
    if kept.get("evaluation"):
        assert cards["test accuracy"]["value"].startswith(f"{kept['evaluation']['test_accuracy']:.4f} ± ")
    png = Image.open(REPO / "docs" / "report.png")
    assert png.size[0] >= 1000


def test_report_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert sweepctl(["report", "nope", "--storage", str(tmp_path)]) == 2
    assert "no sweep 'nope'" in capsys.readouterr().err
    write_sweep(tmp_path, grid_sweep())
    assert sweepctl(["report", "synthetic", "--storage", str(tmp_path), "--heatmap", "filters", "momentum"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"unknown parameter 'momentum'.*model\.filters", err) and "Traceback" not in err
    for args, message in ((["--at-epoch", "9"], "no trial has a val_acc at epoch 9"),
                          (["--curves", "t01", "t99"], "no trial t99")):
        assert sweepctl(["report", "synthetic", "--storage", str(tmp_path), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    with pytest.raises(SystemExit):  # argparse: an epoch or 'best'
        sweepctl(["report", "synthetic", "--storage", str(tmp_path), "--at-epoch", "last"])
    assert "expected an epoch number or 'best'" in capsys.readouterr().err


def test_report_draws_the_pbt_lineage_when_exploits_are_recorded(tmp_path):
    a, b, c = (trial(x, {"train.optimizer.lr": 10.0 ** -i}, curve(0.8 + 0.05 * i, 6)) for i, x in enumerate("abc"))
    b.exploits = [Exploit(epoch=2, donor="a", config={"train.optimizer.lr": 0.01})]
    c.exploits = [Exploit(epoch=4, donor="b", config={"train.optimizer.lr": 0.02})]
    write_sweep(tmp_path, sweep_of([a, b, c], 6))
    page = report.generate_report(str(tmp_path), "synthetic").read_text()
    out = tmp_path / "synthetic" / "report"  # the default report directory
    assert is_png((out / "pbt_lineage.png").read_bytes())
    assert 'href="pbt_lineage.png"' in page and "No PBT" not in page
    assert "c (epochs 5–6) ← b (epochs 3–4) ← a (epochs 1–2)" in page


def test_the_page_escapes_what_the_record_holds(tmp_path):
    # A categorical value is user text (from the spec): the template's autoescaping shows it, never runs it.
    trials = [trial(f"t{i}", {"model.act": act, "train.optimizer.lr": lr}, curve(0.7 + 0.1 * i, 2))
              for i, (act, lr) in enumerate((a, lr) for a in ("relu", "<script>x</script>") for lr in (1e-3, 1e-2))]
    write_sweep(tmp_path, sweep_of(trials, 2))
    page = report.generate_report(str(tmp_path), "synthetic", tmp_path / "out").read_text()
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page


def test_a_sweep_of_the_old_format_still_gets_its_report(tmp_path):
    # Sweeps written before the typed record (one summary.json, format 1) are read through SweepStore.
    index, trials = grid_sweep()
    legacy = {**index.model_dump(mode="json", exclude={"format", "trials"}),
              "trials": [t.model_dump(mode="json", exclude={"format"}) for t in trials]}
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "summary.json").write_text(json.dumps(legacy))
    out = report.generate_report(str(tmp_path), "synthetic", tmp_path / "out").parent
    data = json.loads((out / "report.json").read_text())
    assert [r["trial_id"] for r in data["leaderboard"]] == [t.trial_id for t in index.ranked()[:5]]


def test_the_template_ships_inside_the_package():
    from importlib.resources import files

    assert (files("service.analysis") / "templates" / "report.html.j2").is_file()


@pytest.mark.parametrize("num_classes,channels", [(10, 1), (100, 3)], ids=["digits-like", "cifar100-like"])
def test_test_set_figures_render_for_gray_and_colour_images_and_many_classes(num_classes, channels):
    rng = np.random.default_rng(0)
    names = [f"class-{i}" for i in range(num_classes)]
    labels = rng.integers(0, num_classes, 300)
    preds = np.where(rng.random(300) < 0.7, labels, rng.integers(0, num_classes, 300))
    cm = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(cm, (labels, preds), 1)
    worst = [{"index": i, "true": int(labels[i]), "pred": int(preds[i]), "prob_true": 0.1, "prob_pred": 0.8}
             for i in range(7)]
    images = rng.random((7, channels, 16, 16))
    for png in (figures.fig_confusion(cm, names), figures.fig_per_class(np.diag(cm) / np.maximum(cm.sum(1), 1), names),
                figures.fig_worst_images(images, worst, names),
                figures.fig_tsne(rng.normal(size=(300, 2)), labels, preds != labels, names)):
        assert is_png(png)


def test_a_multi_objective_report_draws_the_records_front_and_lists_the_infeasible_trials(tmp_path):
    """Three objectives and two constraints, recorded by the driver's own RecordWriter: the page's
    front is the record's, every infeasible trial is listed with its reason and none is ranked."""
    from service.core.record import RecordWriter, new_index
    from service.core.spec import parse_constraint

    objectives = [Objective(metric="val_acc", mode="max"), Objective(metric="params", mode="min"),
                  Objective(metric="inference_ms", mode="min")]
    index = new_index("synthetic", objectives[0], max_epochs=2, num_trials=7, attempt=1, objectives=objectives,
                      constraints=[parse_constraint("params <= 5000"), parse_constraint("inference_ms < 2")])
    writer = RecordWriter(SweepStore(str(tmp_path), "synthetic"), index)
    rows = [("a", 0.90, 4000, 1.0), ("b", 0.85, 1000, 0.5), ("c", 0.80, 1000, 0.4), ("d", 0.70, 3000, 1.5),
            ("e", 0.95, 4500, 3.0)]  # e: the most accurate, too slow
    for trial_id, acc, params, ms in rows:
        record = writer.trial(trial_id, {"model.filters": params // 100})
        writer.set_status(record, "running")
        for epoch in (1, 2):
            writer.add_result(record, EpochResult(epoch=epoch, val_acc=acc - 0.1 * (2 - epoch), val_loss=1 - acc,
                                                  val_samples=N_VAL, params=params, inference_ms=ms, train_seconds=epoch))
        writer.set_status(record, "terminated")
        writer.changed(record)
    big = writer.trial("f", {"model.filters": 90})
    writer.reject(big, "params = 9,000 breaks 'params <= 5000'")
    writer.changed(big)
    assert writer.write_index("finished", wall_seconds=5.0)
    index = SweepStore(str(tmp_path), "synthetic").read_index()
    assert index.pareto_front == ["a", "b", "c"] and index.best_trial == "a"  # d: dominated by b; e: infeasible

    out = tmp_path / "out"
    assert sweepctl(["report", "synthetic", "--storage", str(tmp_path), "-o", str(out)]) == 0
    page, rep = (out / "report.html").read_text(), json.loads((out / "report.json").read_text())
    assert is_png((out / "pareto.png").read_bytes()) and "pareto.png" in rep["figures"]
    assert rep["pareto"]["front"] == index.pareto_front
    assert [r["trial_id"] for r in rep["pareto"]["rows"]] == ["a", "b", "c"]
    assert {p["trial_id"]: p["front"] for p in rep["pareto"]["points"]} == {
        "a": True, "b": True, "c": True, "d": False, "e": False}
    assert "first two of the 3 objectives" in page
    assert {r["trial_id"]: r["reason"] for r in rep["infeasible"]} == {
        "e": "inference_ms = 3 breaks 'inference_ms < 2'", "f": "params = 9,000 breaks 'params <= 5000'"}
    assert [r["trial_id"] for r in rep["leaderboard"]] == ["a", "b", "c", "d"]  # never an infeasible trial
    assert '<h3 id="infeasible">' in page and "rejected" in page
    assert {c["label"]: c["value"] for c in rep["cards"]}["Pareto front"] == "3 of 5"
