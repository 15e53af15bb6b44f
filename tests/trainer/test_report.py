"""The report's analyses (service/analysis/analyses.py) on hand-written typed records (no Ray, no
training): the logic, then that every figure renders and the page embeds and links it."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.analysis import analyses, figures, report
from service.cli import main as sweepctl
from service.core import storage
from service.core.record import EpochResult, Exploit, Objective, SweepIndex, SweepStore, TrialRecord, ranked

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- synthetic records
def history(val_loss, train_loss, val_acc=None, train_acc=None) -> list[EpochResult]:
    n = len(val_loss)
    val_acc = val_acc or [0.5 + 0.01 * i for i in range(n)]
    train_acc = train_acc or [0.5 + 0.02 * i for i in range(n)]
    return [
        EpochResult(epoch=i + 1, val_loss=v, train_loss=t, val_acc=va, train_acc=ta, lr=1e-3)
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


# ----------------------------------------------------------------------------- overfitting
def test_overfitting_flag_fires_when_val_loss_rises_while_train_loss_falls():
    overfits = history(val_loss=[1.0, 0.7, 0.6, 0.65, 0.7, 0.8], train_loss=[1.1, 0.8, 0.6, 0.5, 0.4, 0.3])
    assert analyses.detect_overfitting(overfits, min_epochs=2) == {"overfitting": True, "start_epoch": 4, "epochs": 3}
    assert analyses.detect_overfitting(overfits, min_epochs=3)["overfitting"]
    assert not analyses.detect_overfitting(overfits, min_epochs=4)["overfitting"]


def test_overfitting_flag_stays_quiet_on_healthy_noisy_or_diverging_runs():
    healthy = history(val_loss=[1.0, 0.7, 0.6, 0.55, 0.5], train_loss=[1.1, 0.8, 0.6, 0.5, 0.4])
    one_bump = history(val_loss=[1.0, 0.7, 0.75, 0.6, 0.62, 0.5], train_loss=[1.1, 0.8, 0.6, 0.5, 0.4, 0.3])
    both_rise = history(val_loss=[1.0, 0.7, 0.9, 1.2], train_loss=[1.1, 0.8, 1.0, 1.3])  # diverging lr, not memorising
    flat_val = history(val_loss=[1.0, 0.7, 0.7, 0.7], train_loss=[1.1, 0.8, 0.6, 0.5])
    for h in (healthy, one_bump, both_rise, flat_val, history([0.5], [0.6]), []):
        assert analyses.detect_overfitting(h, min_epochs=2) == {"overfitting": False, "start_epoch": None, "epochs": 0}
    # the first qualifying run is reported, not a shorter earlier one
    later = history(val_loss=[1.0, 1.1, 0.9, 0.95, 1.0], train_loss=[1.0, 0.9, 0.8, 0.7, 0.6])
    assert analyses.detect_overfitting(later, min_epochs=2) == {"overfitting": True, "start_epoch": 4, "epochs": 2}


# ----------------------------------------------------------------------------- leaderboard
def test_leaderboard_rows_are_the_record_numbers_best_first():
    index, trials = grid_sweep()
    rows = analyses.leaderboard_rows(index, trials, top=5)
    by_id = {t.trial_id: t for t in trials}
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["trial_id"] == index.best_trial
    assert [r["trial_id"] for r in rows] == [t.trial_id for t in index.ranked()[:5]]  # the one ranking
    accs = [r["val_acc"] for r in rows]
    assert accs == sorted(accs, reverse=True)
    for r in rows:
        t = by_id[r["trial_id"]]
        assert r["params"] == t.config
        for k in ("val_acc", "val_loss", "train_acc", "train_loss"):
            assert r[k] == getattr(t.best, k)
        assert (r["best_epoch"], r["epochs"], r["seconds"], r["status"]) == (
            t.best.epoch, t.epochs, t.seconds, t.status)
    # a minimized objective ranks the lowest first
    low = [trial(f"m{i}", {"x": i}, curve(0.9, 2), metric="val_loss", mode="min") for i in range(3)]
    low[1].best.val_loss = 0.01
    assert analyses.leaderboard_rows(*sweep_of(low, 2, metric="val_loss", mode="min"), top=1)[0]["trial_id"] == "m1"


# ----------------------------------------------------------------------------- heatmap
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
    # the errored trial (t05: filters 16, lr 1e-3, dropout 0) leaves one trial in its cell
    assert table["count"][0][1] == 1


def test_heatmap_empty_cell_is_none_and_params_resolve_by_short_name():
    kept = [t for t in grid_trials() if not (t.config["model.filters"] == 32 and t.config["train.optimizer.lr"] == 3e-3)]
    index, trials = sweep_of(kept, max_epochs=3)
    table = analyses.heatmap_table(index, trials, "model.filters", "train.optimizer.lr")
    assert table["mean"][1][2] is None and table["count"][1][2] == 0
    assert analyses.resolve_param(trials, "lr") == "train.optimizer.lr"
    assert analyses.resolve_param(trials, "model.filters") == "model.filters"
    with pytest.raises(analyses.AnalysisError, match="varied parameters"):
        analyses.resolve_param(trials, "momentum")


# ----------------------------------------------------------------------------- compute
def test_epochs_saved_is_full_budget_minus_epochs_run():
    trials = [trial("a", {"x": 1}, curve(0.9, 8)), trial("b", {"x": 2}, curve(0.5, 2), status="stopped_early"),
              trial("c", {"x": 3}, curve(0.6, 4), status="stopped_early"), trial("d", {"x": 4}, [], status="error")]
    acct = analyses.compute_accounting(*sweep_of(trials, max_epochs=8, wall=12.0))
    assert acct["epochs_run"] == 8 + 2 + 4 + 0
    assert acct["full_budget_epochs"] == 4 * 8
    assert acct["epochs_saved"] == 32 - 14
    assert acct["trial_seconds"] == pytest.approx(1.5 * 14)
    assert acct["parallelism"] == pytest.approx(1.5 * 14 / 12.0)


# ----------------------------------------------------------------------------- importance
def test_importance_finds_the_parameter_that_drives_the_objective():
    trials = []
    for i, (lr, filters) in enumerate((lr, f) for lr in (1e-4, 1e-3, 1e-2) for f in (8, 16, 32)):
        acc = {1e-4: 0.5, 1e-3: 0.8, 1e-2: 0.95}[lr] + (0.001 if filters == 16 else 0.0)
        trials.append(trial(f"t{i}", {"train.optimizer.lr": lr, "model.filters": filters}, curve(acc, 2)))
    imp = analyses.parameter_importance(*sweep_of(trials, 2))
    assert imp["params"]["train.optimizer.lr"] > 0.8
    assert imp["params"]["model.filters"] < 0.05
    assert "FanovaImportanceEvaluator" in imp["method"] and imp["note"] is None
    assert analyses.parameter_importance(*sweep_of(trials, 2)) == imp  # seeded: the same numbers every time

    few = analyses.parameter_importance(*sweep_of(trials[:2], 2))
    assert few["note"] and set(few["params"].values()) == {0.0}


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


def write_sweep(root: Path, sweep: tuple[SweepIndex, list[TrialRecord]], spec_yaml: str | None = None) -> None:
    """The record as the driver leaves it in storage: one trial.json per trial, then the index."""
    index, trials = sweep
    store = SweepStore(str(root), index.sweep)
    for record in trials:
        storage.write_text_atomic(store.trial_record_uri(record.trial_id), record.model_dump_json())
    storage.write_text_atomic(store.index_uri, index.model_dump_json())
    if spec_yaml:
        storage.write_text_atomic(store.spec_uri, spec_yaml)


def test_report_writes_every_figure_embeds_and_links_it(tmp_path):
    trials = grid_trials()
    trials[0].history = history([1.0, 0.8, 0.9], [1.0, 0.8, 0.6])  # overfits from epoch 3
    trials[0].best = trials[0].history[1].model_copy(update={"val_acc": 0.99})
    sweep = sweep_of(trials, max_epochs=3)
    write_sweep(tmp_path, sweep)
    out = tmp_path / "out"
    assert sweepctl(["report", "synthetic", "--storage", str(tmp_path), "-o", str(out), "--top", "3",
                     "--heatmap", "filters", "lr", "--overfit-epochs", "1"]) == 0

    page = (out / "report.html").read_text()
    expected = {"leaderboard.png", "learning_curves.png", "heatmap.png", "parallel_coordinates.png",
                "importance.png", "early_stopping.png", "compute.png"}
    assert expected <= {p.name for p in out.glob("*.png")}
    for name in expected:
        data = (out / name).read_bytes()
        assert is_png(data), name
        assert f'href="{name}"' in page
        assert base64.b64encode(data).decode() in page  # embedded byte for byte: the page is self-contained
    assert "No PBT in this sweep" in page
    assert "from epoch 3" in page  # the overfitting flag reaches the page
    data = json.loads((out / "report.json").read_text())
    assert data["overfitting"]["t01"] == {"overfitting": True, "start_epoch": 3, "epochs": 1}
    assert [r["trial_id"] for r in data["leaderboard"]] == [r["trial_id"] for r in analyses.leaderboard_rows(*sweep, 3)]
    assert data["leaderboard"][0]["trial_id"] == "t01" and f"<td>{0.99:.4f}</td>" in page  # the record's best epoch
    assert data["heatmap"]["x_param"] == "model.filters" and data["heatmap"]["y_param"] == "train.optimizer.lr"


def test_report_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert sweepctl(["report", "nope", "--storage", str(tmp_path)]) == 2
    assert "no sweep 'nope'" in capsys.readouterr().err
    write_sweep(tmp_path, grid_sweep())
    assert sweepctl(["report", "synthetic", "--storage", str(tmp_path), "--heatmap", "filters", "momentum"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"unknown parameter 'momentum'.*model\.filters", err) and "Traceback" not in err


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
