"""Behaviour of trainer.models: every family builds, predicts the right shape and trains."""

import pytest
import torch
from torch import nn

from service.core.spec import CNNSpec, Grid, MLPSpec, ResNetSpec
from trainer.models import activation, build_model

SMALL = [(1, 8, 8), (3, 32, 32)]

SPECS = [
    MLPSpec(name="mlp"),
    MLPSpec(name="mlp", hidden_sizes=[32, 16], batchnorm=True, dropout=0.2, activation="gelu"),
    CNNSpec(name="cnn", filters=8, hidden_size=16),
    CNNSpec(
        name="cnn",
        num_conv_layers=4,  # 8x8 digits: pooling must stop at 1x1, not collapse to 0
        filters=8,
        kernel_size=5,
        batchnorm=True,
        residual=True,
        dropout=0.3,
        num_fc_layers=3,
        hidden_size=16,
        activation="silu",
    ),
    CNNSpec(name="cnn", padding="valid", filters=8, num_fc_layers=1, activation="tanh"),
]


def train_step(model: nn.Module, input_shape, num_classes: int, batch: int = 4) -> torch.Tensor:
    """One SGD step on random data; checks the output shape and that the parameters moved."""
    torch.manual_seed(0)
    x = torch.randn(batch, *input_shape)
    y = torch.randint(0, num_classes, (batch,))
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    out = model(x)
    assert out.shape == (batch, num_classes)
    loss = nn.functional.cross_entropy(out, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters()), "a parameter is not in the graph"
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    return out


@pytest.mark.parametrize("input_shape", SMALL, ids=["1x8x8", "3x32x32"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.name}")
def test_mlp_and_cnn_build_and_train(spec, input_shape):
    model = build_model(spec, input_shape, num_classes=10)
    train_step(model, input_shape, 10)


def test_resnet18_cifar_stem_trains():
    model = build_model(ResNetSpec(name="resnet", depth=18, cifar_stem=True), (3, 32, 32), 10)
    assert isinstance(model.backbone.maxpool, nn.Identity)
    assert model.backbone.conv1.kernel_size == (3, 3) and model.backbone.conv1.stride == (1, 1)
    train_step(model, (3, 32, 32), 10, batch=2)


def test_resnet_stems_and_channels():
    imagenet = build_model(ResNetSpec(name="resnet", cifar_stem=False), (3, 32, 32), 7)
    assert imagenet.backbone.conv1.kernel_size == (7, 7) and isinstance(imagenet.backbone.maxpool, nn.MaxPool2d)
    assert imagenet.head[-1].out_features == 7
    grey = build_model(ResNetSpec(name="resnet", cifar_stem=False), (1, 32, 32), 10)
    assert grey.backbone.conv1.in_channels == 1 and grey.backbone.conv1.kernel_size == (7, 7)
    grey_cifar = build_model(ResNetSpec(name="resnet", cifar_stem=True), (1, 8, 8), 10)
    assert grey_cifar.backbone.conv1.in_channels == 1


def test_cnn_residual_needs_same_padding():
    spec = CNNSpec(name="cnn", padding="valid", residual=True)
    with pytest.raises(ValueError, match="padding"):
        build_model(spec, (3, 32, 32), 10)


def test_cnn_valid_padding_that_cannot_fit_is_refused():
    with pytest.raises(ValueError, match="kernel_size"):
        build_model(CNNSpec(name="cnn", padding="valid", kernel_size=9), (1, 8, 8), 10)
    # 8 -conv3-> 6 -pool-> 3 -conv3-> 1 (no pool) -conv3-> nothing
    with pytest.raises(ValueError, match="num_conv_layers"):
        build_model(CNNSpec(name="cnn", padding="valid", num_conv_layers=3), (1, 8, 8), 10)
    # ... while two such layers still fit
    build_model(CNNSpec(name="cnn", padding="valid", num_conv_layers=2, filters=4), (1, 8, 8), 10)


def test_cnn_pools_only_while_it_can():
    model = build_model(CNNSpec(name="cnn", num_conv_layers=5, filters=4), (1, 8, 8), 10)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3  # 8 -> 4 -> 2 -> 1, then no more pooling


def test_build_does_not_touch_batchnorm_statistics():
    model = build_model(CNNSpec(name="cnn", batchnorm=True), (3, 16, 16), 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 0
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
    assert model.training


def test_unresolved_search_primitive_is_refused():
    spec = CNNSpec(name="cnn", filters=Grid[int](grid=[8, 16]))
    with pytest.raises(ValueError, match="filters"):
        build_model(spec, (1, 8, 8), 10)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "elu", "silu", "gelu", "sigmoid", "tanh"])
def test_activations(name):
    module = activation(name)
    assert isinstance(module, nn.Module)
    assert module(torch.zeros(3)).shape == (3,)


def test_unknown_activation():
    with pytest.raises(ValueError, match="swish"):
        activation("swish")
