"""TPE searchers and PBT on real local Ray with tiny real data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.core.record import SweepStore
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
