"""Every model family of the studies builds from spec params and trains; transfer-learning weights."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

from service.core.spec import SweepSpec
from trainer.models import build_model, load_backbone_weights, mlp_widths

SPECS = {
    "mlp list": {"name": "mlp", "hidden_sizes": [64, 32], "activation": "gelu", "batchnorm": True},
    "mlp halve": {"name": "mlp", "width_schedule": "halve", "num_layers": 3, "residual": True},
    "mlp quarter": {"name": "mlp", "width_schedule": "quarter", "activation": "elu", "dropout": 0.2},
    "cnn": {"name": "cnn", "num_conv_layers": 3, "filters": 8, "residual": True, "activation": "silu"},
    "cifar10net": {"name": "cifar10net", "conv_channels": [8, 16], "fc1": 32, "fc2": 16},
    "small_resnet": {"name": "small_resnet", "h_1": 8, "h_2": 16, "dropout": 0.1, "activation": "leaky_relu"},
    "resnet18 linear": {"name": "resnet", "depth": 18, "cifar_stem": True},
    "resnet34 mlp head": {"name": "resnet", "depth": 34, "head": "mlp", "head_widths": [32], "head_activation": "sigmoid"},
    "resnet50 resized": {"name": "resnet", "depth": 50, "resize": 40, "head_dropout": 0.1},
}


def model_spec(params: dict):
    return SweepSpec.model_validate({"name": "zoo", "data": {"name": "synthetic"}, "model": params}).model


@pytest.mark.parametrize("params", SPECS.values(), ids=SPECS.keys())
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)], ids=["rgb32", "grey28"])
def test_every_family_builds_from_spec_params_and_trains_a_step(params, shape):
    torch.manual_seed(0)
    model = build_model(model_spec(params), shape, 10)
    x, y = torch.randn(4, *shape), torch.arange(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert model(x).shape == (4, 10)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_mlp_width_schedules_halve_or_quarter_from_the_input_down():
    halve = model_spec({"name": "mlp", "width_schedule": "halve", "num_layers": 10})
    assert mlp_widths(halve, 784, 10) == [392, 196, 98, 49, 24, 12]
    quarter = model_spec({"name": "mlp", "width_schedule": "quarter", "num_layers": 2})
    assert mlp_widths(quarter, 3072, 10) == [768, 192]
    with pytest.raises(ValueError, match="hidden_sizes"):
        mlp_widths(quarter, 16, 10)


def test_resnet_frozen_mode_gives_the_backbone_no_gradient_and_keeps_it_in_eval():
    model = build_model(model_spec({"name": "resnet", "depth": 18, "mode": "frozen"}), (3, 32, 32), 10)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert not model.backbone.training and model.head.training


def test_weights_uri_loads_a_state_dict_and_refuses_pickled_objects(tmp_path):
    import torchvision

    donor = torchvision.models.resnet18(weights=None)
    torch.save(donor.state_dict(), tmp_path / "resnet18.pt")
    model = build_model(
        model_spec({"name": "resnet", "depth": 18, "mode": "finetune", "weights_uri": str(tmp_path / "resnet18.pt")}),
        (3, 32, 32),
        7,
    )
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, donor.state_dict()[name]), name
    assert model.head[-1].out_features == 7  # the donor's 1000-class fc was not taken

    torch.save({"weights": collections.Counter(a=1), "code": PickledThing()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights-only"):
        load_backbone_weights(str(tmp_path / "evil.pt"))


class PickledThing:
    """An arbitrary object: unpickling it means importing and running this module's code."""
