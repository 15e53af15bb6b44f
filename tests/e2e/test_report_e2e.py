"""`sweepctl report` and `sweepctl evaluate` on tiny real sweeps (real Ray, digits, 2 epochs): a
grid under ASHA and an Optuna sweep of continuous parameters. Every figure exists and is a real
PNG; the page embeds and links them; the numbers on it are the sweep record's (SweepStore) and the
checkpoint's; the noise, the equal-budget comparisons and the overlaid curves are on it."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from service.analysis import stats
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
    out = Path(storage) / name / "report"
    assert not out.exists()  # report.auto is false here (tests/conftest.py BASE_SPEC): the driver wrote none
    assert sweepctl(["report", name, "--storage", storage, *extra]) == 0
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
            assert f"<td>{trial.best.metric(k):.4f}{' ± ' if k.startswith('val') else '</td>'}" in page
        assert (row["epochs"], row["seconds"], row["params"]) == (trial.epochs, trial.seconds, trial.config)
        # the error bars' numbers: the binomial SE of the recorded accuracy on the recorded split size
        assert trial.best.val_samples == 288  # 20 % of digits' 1,438 training images
        assert row["val_acc_se"] == pytest.approx(stats.binomial_se(trial.best.val_acc, 288))
        assert f"<td>{trial.best.val_acc:.4f} ± {row['val_acc_se']:.4f}</td>" in page
        assert f"<td>{trial.best.val_loss:.4f} ± {trial.best.val_loss_se:.4f}</td>" in page


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
    assert f"{ev['test_accuracy']:.4f} ± {stats.binomial_se(ev['test_accuracy'], ev['test_size']):.4f}" in page
    assert ev["tsne"]["points"] == len(labels)  # digits' 359 test images: under the subsample bound


def test_asha_grid_report_shows_noise_equal_budget_curves_and_the_top_two_parameters(ray_local, make_spec):
    # One trial at a time (a seeded shuffle of the grid), two hopeless learning rates: ASHA meets
    # full rungs and cuts; the report compares every trial at rung 1, which all reached.
    spec = make_spec(
        name="report-asha",
        model={"filters": {"grid": [4, 8]}},
        train={"optimizer": {"lr": {"grid": [3e-3, 1e-3, 1e-6]}}},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        resources={"max_concurrent_trials": 1},
    )
    index = run_sweep(spec, echo=quiet)
    stopped = [t for t in index.trials if t.status == "stopped_early"]
    assert stopped, index.trial_states
    out, page, rep, ev = report_and_evaluate(spec.storage.uri, spec.name, "--top", "4")

    assert_page_has(page, out, SWEEP_FIGURES | {"heatmap.png"} | TEST_FIGURES)
    assert set(rep["figures"]) == SWEEP_FIGURES | {"heatmap.png"} | TEST_FIGURES
    store = SweepStore(spec.storage.uri, spec.name)
    assert index == store.read_index()  # what run_sweep returned is what it left in storage
    trials = store.read_trials(index)
    by_id = {t.trial_id: t for t in trials}
    assert len(rep["leaderboard"]) == 4
    check_leaderboard(index, trials, rep, page)
    assert rep["indistinguishable"]["members"][0] == index.best_trial and "indistinguishable" in page

    # equal budget: rung 1, the last rung every trial reached; each compared value is the record's there
    budget = rep["budget"]
    assert (budget["mode"], budget["epoch"]) == ("rung", 1) and "val_acc at epoch 1" in page
    assert budget["scores"] == {t.trial_id: t.history[0].val_acc for t in trials}
    # the heatmap: on the two most important parameters (both here), cells averaged at that epoch
    imp = rep["importance"]["params"]
    hm = rep["heatmap"]
    assert hm["kind"] == "grid" and [hm["x_param"], hm["y_param"]] == sorted(imp, key=imp.get, reverse=True)[:2]
    for i, y in enumerate(hm["y_values"]):
        for j, x in enumerate(hm["x_values"]):
            (match,) = [t for t in trials if t.config[hm["x_param"]] == x and t.config[hm["y_param"]] == y]
            assert hm["mean"][i][j] == match.history[0].val_acc and hm["count"][i][j] == 1
    assert rep["importance"]["caveat"]  # 6 trials for 2 parameters

    # the overlaid curves: the top trials, labelled by the values that differ, each stop explained
    curves = rep["curves"]
    assert curves["trials"] == [r["trial_id"] for r in rep["leaderboard"]]
    for trial_id in curves["trials"]:
        config = by_id[trial_id].config
        assert f"lr={config['train.optimizer.lr']:.4g}" in curves["labels"][trial_id]
        assert curves["labels"][trial_id] in page
    assert {t.trial_id for t in stopped} == {t for t, s in curves["stops"].items() if s["reason"] == "rung"}

    decisions = rep["early_stopping"]
    assert [r["epoch"] for r in decisions["rungs"]] == [1]  # grace 1 × 2^k below 2 epochs
    assert decisions["rungs"][0]["cut"] == len(stopped)
    epochs_run = sum(t.epochs for t in index.trials)
    assert rep["compute"]["epochs_run"] == epochs_run
    assert rep["compute"]["epochs_saved"] == 6 * 2 - epochs_run == len(stopped)
    assert sum(rep["compute"]["phases"][k] for k in ("training", "checkpoints", "trial_start", "worker_startup")) == \
        pytest.approx(rep["compute"]["trial_seconds"])
    assert rep["pbt"] is None and "No PBT in this sweep" in page
    check_evaluation(index, ev, page)
    json.dumps(rep)  # report.json is plain JSON (no NaN)


def test_optuna_sweep_report_scatters_its_two_most_important_continuous_parameters(ray_local, make_spec):
    spec = make_spec(
        name="report-optuna",
        model={"dropout": {"uniform": [0.0, 0.5]}},
        train={"optimizer": {"lr": {"loguniform": [1e-4, 1e-2]}}},
        search={"algorithm": "optuna", "num_samples": 4},
    )
    index = run_sweep(spec, echo=quiet)
    assert index.trial_states == {"terminated": 4}
    assert sweepctl(["report", spec.name, "--storage", spec.storage.uri]) == 0
    out = Path(spec.storage.uri) / spec.name / "report"
    page, rep = (out / "report.html").read_text(), read_json(out / "report.json")

    assert_page_has(page, out, SWEEP_FIGURES | {"heatmap.png"})
    hm, imp = rep["heatmap"], rep["importance"]
    assert hm["kind"] == "scatter" and len(hm["points"]) == 4
    assert {hm["x_param"], hm["y_param"]} == {"model.dropout", "train.optimizer.lr"}
    assert [hm["x_param"], hm["y_param"]] == sorted(imp["params"], key=imp["params"].get, reverse=True)[:2]
    assert hm["x_log" if hm["x_param"] == "train.optimizer.lr" else "y_log"]  # loguniform: a log axis
    assert imp["scales"]["train.optimizer.lr"].startswith("log10 over [0.0001, 0.01] (loguniform)")
    assert rep["budget"]["mode"] == "common" and rep["budget"]["epoch"] == 2  # FIFO: all ran 2 epochs
    assert "Caveat: 4 trials for 2 parameters" in page


def test_a_report_that_cannot_be_written_leaves_the_sweep_finished_and_sweepctl_report_writes_it(
        ray_local, make_spec, tmp_path, capsys):
    """report.auto on, and a file where the report's directory goes (put there while the sweep
    runs): the sweep still finishes, `sweepctl run` exits 0, the driver log has one line saying
    so; once the place is free, `sweepctl report` writes the report."""
    spec = make_spec(name="report-blocked", train={"epochs": 1}, report={"auto": True})
    spec_file = tmp_path / "report-blocked.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    store = SweepStore(spec.storage.uri, spec.name)
    blocker = Path(spec.storage.uri) / spec.name / "report"

    def block_the_report_directory():  # once the driver has made the sweep's directory (its spec.yaml)
        deadline = time.monotonic() + 300
        while not Path(store.spec_uri).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        blocker.write_text("a file, not a directory")

    blocking = threading.Thread(target=block_the_report_directory, daemon=True)
    blocking.start()
    assert sweepctl(["run", str(spec_file)]) == 0
    blocking.join()
    out = capsys.readouterr().out

    index = store.read_index()
    assert index.status == "finished" and index.trial_states == {"terminated": 1}
    said = [line for line in store.read_driver_log().splitlines() if "report" in line]
    assert len(said) == 1 and "the sweep finished but its report was not written" in said[0], said
    assert f"{blocker}/" in said[0]  # the storage error, naming where
    assert said[0].endswith(f"sweepctl report {spec.name} --storage {spec.storage.uri} writes it")
    assert "report: not written" in out and "Top " in out
    assert blocker.read_text() == "a file, not a directory"  # nothing written over it

    blocker.unlink()
    assert sweepctl(["report", spec.name, "--storage", spec.storage.uri]) == 0
    assert index.best_trial in (blocker / "report.html").read_text()
