"""The trainer's speed-ups change no numbers: ReLU after max-pooling trains to the very same
weights as the studies' conv → ReLU → pool, and channels-last is used only where convolutions are."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from service.core.spec import SweepSpec
from trainer.models import ConvBlock, build_model, preferred_memory_format

MODELS = {
    "cnn with batchnorm and residual": {"name": "cnn", "num_conv_layers": 3, "filters": 8, "batchnorm": True,
                                        "residual": True},
    "cifar10net": {"name": "cifar10net", "conv_channels": [8, 16], "fc1": 32, "fc2": 16},
}


def model(params: dict, *, studies_order: bool) -> nn.Module:
    torch.manual_seed(0)
    built = build_model(SweepSpec.model_validate({"name": "t", "data": {"name": "synthetic"}, "model": params}).model,
                        (3, 16, 16), 10)
    if studies_order:  # conv → ReLU → pool, as the studies wrote it
        for module in built.modules():
            if isinstance(module, ConvBlock):
                module.pool_first = False
            if isinstance(module, nn.Sequential):
                layers = list(module)
                for i in range(len(layers) - 1):
                    if isinstance(layers[i], nn.MaxPool2d) and type(layers[i + 1]) is nn.ReLU:
                        module[i], module[i + 1] = layers[i + 1], layers[i]
    return built.to(memory_format=preferred_memory_format(built))


def trained_weights(net: nn.Module, amp: bool) -> dict:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(96, 3, 16, 16, generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (96,), generator=generator)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, fused=True)
    for batch in torch.arange(96).split(32):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(net(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.state_dict()


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_pooling_before_relu_trains_to_bit_identical_weights(name, amp):
    ours = trained_weights(model(MODELS[name], studies_order=False), amp)
    studies = trained_weights(model(MODELS[name], studies_order=True), amp)
    assert ours.keys() == studies.keys()  # the same state_dict: checkpoints load either way
    assert all(torch.equal(ours[key], studies[key]) for key in ours)


def test_other_activations_keep_their_order():
    gelu = build_model(SweepSpec.model_validate(
        {"name": "t", "data": {"name": "synthetic"}, "model": {"name": "cnn", "activation": "gelu"}}).model, (3, 16, 16), 10)
    assert not any(block.pool_first for block in gelu.modules() if isinstance(block, ConvBlock))


def test_channels_last_only_for_models_with_convolutions():
    def fmt(params):
        spec = SweepSpec.model_validate({"name": "t", "data": {"name": "synthetic"}, "model": params})
        return preferred_memory_format(build_model(spec.model, (3, 16, 16), 10))

    assert fmt({"name": "cnn"}) == torch.channels_last
    assert fmt({"name": "cifar10net"}) == torch.channels_last
    assert fmt({"name": "mlp"}) == torch.contiguous_format
