"""TPE searchers and PBT on real local Ray with tiny real data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import BASE_SPEC, deep_update
from service.core import storage
from service.core.record import SweepStore
from service.core.spec import SweepSpec
from trainer import load_model
from trainer.loop import weights_digest
from trainer.models import build_model
from trainer.driver.sweep import run_sweep

pytestmark = pytest.mark.slow


def quiet(_line: str) -> None:
    pass


@pytest.mark.parametrize("algorithm", ["optuna", "hyperopt"])
def test_tpe_searchers_with_a_fixed_seed_propose_the_same_configs_twice(ray_local, make_spec, algorithm):
    changes = dict(
        model={"name": "mlp", "hidden_sizes": {"choice": [[16], [32], [32, 16]]}},
        train={"epochs": 1, "optimizer": {"lr": {"loguniform": [1e-4, 1e-2]}}},
        search={"algorithm": algorithm, "num_samples": 4},
        # one at a time: each proposal sees the same finished results in both runs
        resources={"max_concurrent_trials": 1},
    )
    first = run_sweep(make_spec(name=f"{algorithm}-a", **changes), echo=quiet)
    second = run_sweep(make_spec(name=f"{algorithm}-b", **changes), echo=quiet)
    configs = lambda s: [t.config for t in s.trials]  # noqa: E731 (the index lists trials as created)
    assert len(configs(first)) == 4
    assert configs(first) == configs(second)
    assert len({str(c) for c in configs(first)}) > 1  # it did explore
    other_seed = run_sweep(make_spec(name=f"{algorithm}-c", seed=1, **changes), echo=quiet)
    assert configs(other_seed) != configs(first)


@pytest.mark.parametrize("algorithm", ["random", "optuna", "hyperopt"])
def test_a_conditional_optimizer_space_trains_each_trial_with_its_own_branchs_parameters(ray_local, tmp_path, algorithm):
    from trainer.driver import space

    sgd = {"name": "sgd", "lr": {"loguniform": [1e-3, 1e-1]}, "momentum": {"uniform": [0.5, 0.99]}}
    adam = {"name": "adam", "lr": {"loguniform": [1e-4, 1e-2]}}
    data = deep_update(BASE_SPEC, {"name": f"conditional-{algorithm}", "storage": {"uri": str(tmp_path / "runs")},
                                   "search": {"algorithm": algorithm, "num_samples": 4}})
    data["train"] = {**data["train"], "epochs": 1, "optimizer": {"choice": [sgd, adam]}}
    spec = SweepSpec.model_validate(data)
    index = run_sweep(spec, echo=quiet)
    trials = SweepStore(spec.storage.uri, spec.name).read_trials(index)
    assert len(trials) == 4 and all(t.status == "terminated" for t in trials)
    names = set()
    for t in trials:  # the record holds what the trial had: its branch's parameters, no other
        name = t.config["train.optimizer.name"]
        names.add(name)
        own = {"train.optimizer.name", "train.optimizer.lr"} | ({"train.optimizer.momentum"} if name == "sgd" else set())
        assert set(t.config) == own, t.config
        lo, hi = (1e-3, 1e-1) if name == "sgd" else (1e-4, 1e-2)
        assert lo <= t.config["train.optimizer.lr"] <= hi
        # ... and trained with them: the checkpoint's spec and the optimizer's own state
        _, trained = load_model(t.checkpoint)
        assert (trained.train.optimizer.name, trained.train.optimizer.lr) == (name, t.config["train.optimizer.lr"])
        (group,) = torch.load(Path(t.checkpoint, "state.pt"), weights_only=True)["optimizer"]["param_groups"]
        assert group["lr"] == t.config["train.optimizer.lr"]  # lr_schedule none: unchanged
        if name == "sgd":
            assert group["momentum"] == trained.train.optimizer.momentum == t.config["train.optimizer.momentum"]
        else:
            assert "betas" in group and "momentum" not in group
    assert names == {"sgd", "adam"}
    # The seeded searcher proposes these very configs again (told the same results: with 4 trials
    # both TPEs are still in their seeded start-up phase, so two trials may run side by side).
    searcher = space.searcher(spec)
    for t in trials:  # the record lists them as Tune created them
        assert searcher.suggest(t.trial_id) == t.config
        result = {"val_acc": t.history[-1].val_acc, "training_iteration": 1}
        searcher.on_trial_result(t.trial_id, result)
        searcher.on_trial_complete(t.trial_id, result)


def test_pbt_exploit_restores_the_donors_weights(ray_local, make_spec):
    spec = make_spec(
        name="pbt",
        model={"name": "mlp", "hidden_sizes": [32]},
        # Two starts, far apart (a grid over a mutated value is refused: PBT would change it).
        train={"epochs": 4, "optimizer": {"name": "sgd", "lr": {"choice": [1e-4, 3e-2]}}},
        search={"algorithm": "random", "num_samples": 2},
        scheduler={
            "name": "pbt",
            "perturbation_interval": 1,
            "quantile": 0.5,
            "mutations": {"train.optimizer.lr": {"loguniform": [1e-3, 1e-1]}},
        },
        checkpoint={"keep": None},  # keep every donor checkpoint for the comparison below
    )
    index = run_sweep(spec, echo=quiet)
    trials = SweepStore(spec.storage.uri, spec.name).read_trials(index)
    exploits = [e for t in trials for e in t.exploits]
    assert exploits, "PBT never exploited"
    for exploit in exploits:
        donor_model, _ = load_model(exploit.donor_checkpoint)
        assert exploit.restored_weights == weights_digest(donor_model)
        state = torch.load(Path(exploit.donor_checkpoint, "state.pt"), weights_only=True)
        assert state["epoch"] == exploit.epoch  # continued from the donor's epoch
    exploited = next(t for t in trials if t.exploits)
    # after the exploit the trial trains with a mutated lr inside the mutation range
    assert 1e-3 <= exploited.exploits[-1].config["train.optimizer.lr"] <= 1e-1
    assert [h.epoch for h in exploited.history] == [1, 2, 3, 4]


def test_frozen_transfer_leaves_the_backbone_exactly_as_loaded(ray_local, make_spec, tmp_path):
    import torchvision

    donor = torchvision.models.resnet18(weights=None)
    torch.save(donor.state_dict(), tmp_path / "resnet18.pt")
    spec = make_spec(
        name="frozen",
        data={"name": "synthetic", "num_samples": 256, "image_size": 16},
        model={"name": "resnet", "depth": 18, "mode": "frozen", "weights_uri": str(tmp_path / "resnet18.pt")},
        train={"epochs": 1},
    )
    index = run_sweep(spec, echo=quiet)
    (trial,) = index.trials
    model, _ = load_model(trial.checkpoint)
    trained = model.backbone.state_dict()
    assert trained.keys() == {k for k in donor.state_dict() if not k.startswith("fc.")}
    for name, tensor in trained.items():  # weights and BatchNorm running statistics alike
        assert torch.equal(tensor, donor.state_dict()[name]), name
    torch.manual_seed(spec.seed)  # the head as it was initialised before training
    fresh_head = build_model(spec.model, (3, 16, 16), 10).head
    assert any(not torch.equal(a, b) for a, b in zip(model.head.state_dict().values(), fresh_head.state_dict().values()))


def _without_objective(make_spec, **changes):
    """make_spec's spec with ``objectives`` instead of the base spec's ``objective``."""
    from conftest import BASE_SPEC, deep_update
    from service.core.spec import SweepSpec

    base = {k: v for k, v in BASE_SPEC.items() if k not in ("objective", "model")}
    storage = make_spec().storage.uri  # this test's tmp dir
    return SweepSpec.model_validate(deep_update(base, {"storage": {"uri": storage}, **changes}))


def test_a_two_objective_optuna_sweep_records_the_non_dominated_trials_as_its_front_and_the_report_draws_it(
        ray_local, make_spec):
    import re

    from service.cli import main as sweepctl
    from service.core.storage import read_json

    spec = _without_objective(
        make_spec, name="pareto",
        model={"name": "cnn", "num_conv_layers": 1, "num_fc_layers": 1, "filters": {"choice": [2, 4, 8, 16]}},
        train={"epochs": 1, "optimizer": {"lr": {"loguniform": [1e-3, 1e-2]}}},
        search={"algorithm": "optuna", "num_samples": 6},
        objectives=[{"metric": "val_acc"}, {"metric": "params"}],
    )
    index = run_sweep(spec, echo=quiet)
    store = SweepStore(spec.storage.uri, spec.name)
    trials = store.read_trials(index)
    assert index.trial_states == {"terminated": 6}
    # each trial's values at its last epoch (what Optuna was told), non-dominance checked pair by pair here
    values = {t.trial_id: (t.history[-1].val_acc, t.history[-1].params) for t in trials}
    assert len({params for _, params in values.values()}) > 1  # the searched width changed the size
    dominated = {a for a, (acc, params) in values.items() for b, (acc_b, params_b) in values.items()
                 if acc_b >= acc and params_b <= params and (acc_b, params_b) != (acc, params)}
    assert set(index.pareto_front) == set(values) - dominated and index.pareto_front
    assert index.best_trial == max(index.pareto_front, key=lambda t: (values[t][0], -values[t][1]))
    assert [o.metric for o in index.objectives] == ["val_acc", "params"] and index.objective.metric == "val_acc"

    assert sweepctl(["report", spec.name, "--storage", spec.storage.uri]) == 0
    out = Path(spec.storage.uri) / spec.name / "report"
    page, rep = (out / "report.html").read_text(), read_json(out / "report.json")
    png = (out / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and "pareto.png" in rep["figures"] and 'href="pareto.png"' in page
    import base64
    assert base64.b64encode(png).decode() in page  # embedded as written
    table = page.split('<table id="pareto-front">', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<tr><td class="l">([0-9a-f_]+)</td>', table) == index.pareto_front  # exactly the front
    assert rep["pareto"]["front"] == index.pareto_front


def test_a_params_constraint_rejects_oversized_grid_points_before_training_and_results_judge_the_rest(
        ray_local, make_spec, capsys):
    from fastapi.testclient import TestClient

    from service.cli import main as sweepctl
    from service.control.api import User, create_app
    from service.control.backends import StorageBackend

    spec = make_spec(
        name="constrained",
        model={"name": "mlp", "hidden_sizes": {"grid": [[16], [512, 512]]}},  # 1,210 and 301,066 parameters
        train={"epochs": 1, "optimizer": {"lr": {"grid": [1e-2, 1e-6]}}},
        constraints=["params <= 50000", "val_acc >= 0.3"],
    )
    said: list[str] = []
    index = run_sweep(spec, echo=said.append)
    store = SweepStore(spec.storage.uri, spec.name)
    trials = {t.trial_id: t for t in store.read_trials(index)}
    assert index.trial_states == {"rejected": 2, "terminated": 2}
    rejected = [t for t in trials.values() if t.status == "rejected"]
    for t in rejected:
        assert t.config["model.hidden_sizes"] == [512, 512]
        assert t.infeasible == "params = 301,066 breaks 'params <= 50000'"
        assert t.history == [] and t.epochs == 0 and t.checkpoints == [] and t.error is None and t.restarts == 0
        log = store.read_trial_log(t.trial_id)
        assert "TrialRejected" in log and "training mlp" not in log  # the loop never started: no data, no model
        assert any(line == f"trial {t.trial_id} rejected before training: {t.infeasible}" for line in said)
    trained = {t.config["train.optimizer.lr"]: t for t in trials.values() if t.status == "terminated"}
    good, hopeless = trained[1e-2], trained[1e-6]
    assert good.infeasible is None and good.best.val_acc >= 0.3
    assert hopeless.infeasible == f"val_acc = {hopeless.best.val_acc:.4g} breaks 'val_acc >= 0.3'"
    assert index.best_trial == good.trial_id and [t.trial_id for t in index.ranked()] == [good.trial_id]

    assert sweepctl(["leaderboard", spec.name, "--storage", spec.storage.uri]) == 0
    board = capsys.readouterr().out
    assert "Infeasible, never ranked (3):" in board
    assert f"  {hopeless.trial_id} (terminated): {hopeless.infeasible}" in board
    assert all(f"  {t.trial_id} (rejected): {t.infeasible}" in board for t in rejected)
    client = TestClient(create_app(StorageBackend(spec.storage.uri), token="", anonymous=User("local", "viewer")))
    view = client.get(f"/ui/data/sweeps/{spec.name}").json()
    assert {t["trial_id"]: t["infeasible"] for t in view["trials"]} == {t: r.infeasible for t, r in trials.items()}
    assert view["index"]["constraints"] == ["params <= 50000", "val_acc >= 0.3"]
    assert client.get(f"/ui/sweeps/{spec.name}").status_code == 200


def test_a_warm_started_grid_reruns_none_of_the_earlier_configurations_and_copies_their_trials(ray_local, make_spec):
    mlp = {"name": "mlp", "hidden_sizes": [16]}
    first = make_spec(name="warm-grid-a", model=mlp, train={"epochs": 1, "optimizer": {"lr": {"grid": [1e-2, 3e-3]}}})
    before = run_sweep(first, echo=quiet)
    earlier = {t.trial_id: t for t in SweepStore(first.storage.uri, first.name).read_trials(before)}
    said: list[str] = []
    second = make_spec(name="warm-grid-b", model=mlp, train={"epochs": 1, "optimizer": {"lr": {"grid": [1e-2, 3e-3, 1e-3]}}},
                       search={"algorithm": "grid", "warm_start": {"sweeps": [first.name]}})
    index = run_sweep(second, echo=said.append)
    assert "warm start: 2 planned configurations were evaluated before: their trials are copied, not run" in said
    trials = SweepStore(second.storage.uri, second.name).read_trials(index)
    assert index.status == "finished" and index.trial_states == {"terminated": 3} and index.num_trials == 3
    ran = [t for t in trials if t.copied_from is None]
    assert [t.config["train.optimizer.lr"] for t in ran] == [1e-3]  # none of the earlier configurations again
    copies = {t.trial_id: t for t in trials if t.copied_from is not None}
    assert set(copies) == set(earlier)
    for trial_id, copy in copies.items():
        assert copy.copied_from == f"{SweepStore(first.storage.uri, first.name).uri}#{trial_id}"
        assert (copy.config, copy.history, copy.checkpoint) == (earlier[trial_id].config, earlier[trial_id].history,
                                                                earlier[trial_id].checkpoint)
    best = max(trials, key=lambda t: (t.best.val_acc, t.trial_id))
    assert index.best.best.val_acc == best.best.val_acc  # all three ranked together
    assert SweepStore(first.storage.uri, first.name).read_index().trials == before.trials  # the earlier sweep untouched
    # The service hands out a copy's checkpoint, which stays in the earlier sweep (same storage).
    from urllib.parse import unquote

    from fastapi.testclient import TestClient

    from service.control.api import User, create_app
    from service.control.backends import StorageBackend

    client = TestClient(create_app(StorageBackend(second.storage.uri), token="", anonymous=User("local", "viewer")))
    trial_id = next(iter(copies))
    pulled = client.get(f"/sweeps/{second.name}/trials/{trial_id}/checkpoint")
    assert pulled.status_code == 200, pulled.text
    assert unquote(pulled.headers["X-Sweep-Checkpoint"]) == storage.normalize(earlier[trial_id].checkpoint)


def test_a_warm_started_optuna_sweep_tells_its_searcher_the_earlier_trials_first(ray_local, make_spec, monkeypatch):
    import optuna

    from trainer.driver import conditional

    changes = dict(model={"name": "mlp", "hidden_sizes": {"choice": [[16], [32]]}},
                   train={"epochs": 1, "optimizer": {"lr": {"loguniform": [1e-3, 3e-2]}}},
                   resources={"max_concurrent_trials": 1})
    first = make_spec(name="warm-optuna-a", search={"algorithm": "optuna", "num_samples": 2}, **changes)
    earlier = SweepStore(first.storage.uri, first.name).read_trials(run_sweep(first, echo=quiet))
    searchers = []
    real = conditional.searcher
    monkeypatch.setattr(conditional, "searcher", lambda *a, **k: searchers.append(real(*a, **k)) or searchers[-1])
    second = make_spec(name="warm-optuna-b", search={"algorithm": "optuna", "num_samples": 2,
                                                     "warm_start": {"sweeps": [first.name]}}, **changes)
    index = run_sweep(second, echo=quiet)
    own = SweepStore(second.storage.uri, second.name).read_trials(index)
    assert len(own) == 2 and all(t.copied_from is None and t.status == "terminated" for t in own)
    (search,) = searchers
    study = search.searcher._ot_study  # Canonical → the OptunaSearch Tune asked
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    told, asked = study.trials[:2], study.trials[2:]
    assert [(search.plan.canonical(t.params), t.value) for t in told] == [
        (t.config, t.history[-1].val_acc) for t in earlier]
    assert sorted(search.plan.canonical(t.params)["train.optimizer.lr"] for t in asked) == sorted(
        t.config["train.optimizer.lr"] for t in own)
