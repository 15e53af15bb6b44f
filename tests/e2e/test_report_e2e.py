"""`sweepctl report` and `sweepctl evaluate` on tiny real sweeps (real Ray, digits, 2 epochs):
a 2×2 grid and an ASHA variant. Every figure exists and is a real PNG; the page embeds and links
them; the numbers on it are the sweep record's (SweepStore) and the checkpoint's."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.cli import main as sweepctl
from service.core.record import SweepIndex, SweepStore, TrialRecord
from service.core.storage import read_json
from trainer import load_model
from trainer.data import load_dataset
from trainer.driver.sweep import run_sweep

pytestmark = pytest.mark.slow

SWEEP_FIGURES = {"leaderboard.png", "learning_curves.png", "parallel_coordinates.png", "importance.png",
                 "early_stopping.png", "compute.png"}
TEST_FIGURES = {"confusion_matrix.png", "per_class_accuracy.png", "worst_images.png", "tsne.png"}


def quiet(_line: str) -> None:
    pass


def assert_png(path: Path, min_bytes: int = 5_000) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= min_bytes, path.name
    image = Image.open(io.BytesIO(data))
    image.verify()
    assert min(image.size) >= 200, (path.name, image.size)


def assert_page_has(page: str, out: Path, figures: set[str]) -> None:
    for name in figures:
        assert_png(out / name)
        assert f'href="{name}"' in page, name
        assert base64.b64encode((out / name).read_bytes()).decode() in page, name  # embedded as written


def report_and_evaluate(storage: str, name: str, *extra: str) -> tuple[Path, str, dict, dict]:
    assert sweepctl(["report", name, "--storage", storage, *extra]) == 0
    out = Path(storage) / name / "report"
    assert "Not evaluated yet" in (out / "report.html").read_text()
    assert sweepctl(["evaluate", name, "--storage", storage, "--worst", "6"]) == 0
    return out, (out / "report.html").read_text(), read_json(out / "report.json"), read_json(out / "evaluation.json")


def check_leaderboard(index: SweepIndex, trials: list[TrialRecord], rep: dict, page: str) -> None:
    by_id = {t.trial_id: t for t in trials}
    assert rep["leaderboard"][0]["trial_id"] == index.best_trial
    assert [row["trial_id"] for row in rep["leaderboard"]] == [t.trial_id for t in index.ranked()[:len(rep["leaderboard"])]]
    for row in rep["leaderboard"]:
        trial = by_id[row["trial_id"]]
        for k in ("val_acc", "val_loss", "train_acc", "train_loss"):
            assert row[k] == trial.best.metric(k)
            assert f"<td>{trial.best.metric(k):.4f}</td>" in page
        assert (row["epochs"], row["seconds"], row["params"]) == (trial.epochs, trial.seconds, trial.config)


def check_evaluation(index: SweepIndex, ev: dict, page: str, k: int = 6) -> None:
    """The test-set numbers against an independent pass of the checkpoint over the test split."""
    best = index.best
    assert ev["trial_id"] == best.trial_id and ev["checkpoint"] == best.checkpoint
    model, spec = load_model(best.checkpoint)
    data = load_dataset(spec.data, spec.seed)
    with torch.no_grad():
        probs = model(data.test_x).softmax(1).numpy()
    labels = data.test_y.numpy()

    cm = np.array(ev["confusion_matrix"])
    assert cm.sum() == ev["test_size"] == len(labels)
    assert np.trace(cm) / cm.sum() == pytest.approx(ev["test_accuracy"])
    assert ev["test_accuracy"] == pytest.approx((probs.argmax(1) == labels).mean())
    assert ev["class_names"] == data.class_names == [str(d) for d in range(10)]

    p_true = probs[np.arange(len(labels)), labels]
    worst = [w["index"] for w in ev["worst"]]
    assert len(worst) == k
    assert sorted(worst) == sorted(np.argsort(p_true, kind="stable")[:k].tolist())
    assert [w["prob_true"] for w in ev["worst"]] == pytest.approx(np.sort(p_true)[:k].tolist(), abs=1e-6)
    assert f"{ev['test_accuracy']:.4f}" in page
    assert ev["tsne"]["points"] == len(labels)  # digits' 359 test images: under the subsample bound


def test_grid_sweep_report_and_evaluation(ray_local, make_spec):
    spec = make_spec(
        name="report-grid",
        model={"filters": {"grid": [4, 8]}},
        train={"optimizer": {"lr": {"grid": [1e-3, 3e-3]}}},
    )
    index = run_sweep(spec, echo=quiet)
    assert index.trial_states == {"terminated": 4}
    out, page, rep, ev = report_and_evaluate(spec.storage.uri, spec.name, "--top", "3")

    assert_page_has(page, out, SWEEP_FIGURES | {"heatmap.png"} | TEST_FIGURES)
    assert set(rep["figures"]) == SWEEP_FIGURES | {"heatmap.png"} | TEST_FIGURES
    store = SweepStore(spec.storage.uri, spec.name)
    assert index == store.read_index()  # what run_sweep returned is what it left in storage
    trials = store.read_trials(index)
    assert len(rep["leaderboard"]) == 3
    check_leaderboard(index, trials, rep, page)

    # heatmap: default axes are the two grid parameters; each cell is its trial's best val_acc
    hm = rep["heatmap"]
    assert (hm["x_param"], hm["y_param"]) == ("model.filters", "train.optimizer.lr")
    for i, lr in enumerate(hm["y_values"]):
        for j, filters in enumerate(hm["x_values"]):
            (match,) = [t for t in trials if t.config == {"model.filters": filters, "train.optimizer.lr": lr}]
            assert hm["mean"][i][j] == match.best.val_acc and hm["count"][i][j] == 1

    assert rep["compute"]["epochs_saved"] == 4 * 2 - sum(t.epochs for t in trials) == 0
    assert rep["early_stopping"]["rungs"] == [] and rep["pbt"] is None
    assert "No PBT in this sweep" in page
    check_evaluation(index, ev, page)


def test_asha_sweep_report_shows_the_cuts_and_the_epochs_saved(ray_local, make_spec):
    # One trial at a time, good learning rates first: the hopeless ones meet a full rung and are cut.
    spec = make_spec(
        name="report-asha",
        train={"optimizer": {"lr": {"grid": [3e-3, 1e-3, 1e-5, 1e-6]}}},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        resources={"max_concurrent_trials": 1},
    )
    index = run_sweep(spec, echo=quiet)
    stopped = [t for t in index.trials if t.status == "stopped_early"]
    assert stopped, index.trial_states
    out, page, rep, ev = report_and_evaluate(spec.storage.uri, spec.name)

    assert_page_has(page, out, SWEEP_FIGURES | TEST_FIGURES)
    assert not (out / "heatmap.png").exists() and "No heatmap" in page  # one grid parameter only
    check_leaderboard(index, SweepStore(spec.storage.uri, spec.name).read_trials(index), rep, page)

    decisions = rep["early_stopping"]
    assert [r["epoch"] for r in decisions["rungs"]] == [1]  # grace 1 × 2^k below 2 epochs
    cut = {t["trial_id"]: t["cut_at_rung"] for t in decisions["trials"]}
    assert {t.trial_id for t in stopped} == {tid for tid, rung in cut.items() if rung == 1}
    assert decisions["rungs"][0]["cut"] == len(stopped)
    epochs_run = sum(t.epochs for t in index.trials)
    assert rep["compute"]["epochs_run"] == epochs_run
    assert rep["compute"]["epochs_saved"] == 4 * 2 - epochs_run == len(stopped)
    check_evaluation(index, ev, page)
    json.dumps(rep)  # report.json is plain JSON (no NaN)
