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


class _Session:
    """What fit needs from ray.tune, in this process: reports kept, checkpoints not."""

    class Checkpoint:
        @staticmethod
        def from_directory(path):
            return None

    def __init__(self):
        self.reports = []

    def get_checkpoint(self):
        return None

    def report(self, metrics, checkpoint=None):
        self.reports.append(metrics)


def test_uint8_held_images_train_to_the_same_numbers_as_float_held_ones(tmp_path, monkeypatch):
    """The loop normalizes uint8 batches as it draws them: the same weights and metrics, to the bit,
    as training on the whole split normalized once as float32 (what it held before)."""
    import dataclasses

    from official_formats import write_cifar10
    from trainer import loop

    write_cifar10(tmp_path / "data", per_batch=24, num_test=4)
    spec = SweepSpec.model_validate({
        "name": "u8", "seed": 1, "storage": {"uri": str(tmp_path / "runs")}, "metrics": {"port": 0},
        "data": {"name": "cifar10", "path": str(tmp_path / "data"), "val_fraction": 0.2,
                 "augment": [{"name": "random_crop", "padding": 2}, {"name": "hflip"}]},
        "model": {"name": "cnn", "num_conv_layers": 2, "filters": 8, "batchnorm": True},
        "train": {"epochs": 2, "batch_size": 16, "optimizer": {"name": "adam", "lr": 3e-3}, "amp": "off"}})
    held = loop._dataset(spec.data.model_dump_json(exclude={"augment"}), spec.seed)
    assert held.train_images.dtype == torch.uint8
    as_float = dataclasses.replace(held, train_images=held.train_x, val_images=held.val_x, test_images=held.test_x)
    runs, weights = {}, {}
    save = loop.save_checkpoint
    for name, data in (("uint8", held), ("float", as_float)):
        monkeypatch.setattr(loop, "_dataset", lambda *_: data)
        digests = weights[name] = []

        def saving(directory, spec, data, model, *rest, digests=digests):
            digests.append(loop.weights_digest(model))  # each epoch's weights, to the bit
            save(directory, spec, data, model, *rest)

        monkeypatch.setattr(loop, "save_checkpoint", saving)
        session = _Session()
        loop.fit(spec, session)
        # (a checkpoint's size varies with the timings its manifest records)
        runs[name] = [{k: v for k, v in r.items() if k not in ("samples_per_second", "epoch_seconds", "train_seconds",
                                                                  "inference_ms", "checkpoint_seconds", "checkpoint_bytes")}
                      for r in session.reports]
    assert runs["uint8"] == runs["float"] and len(runs["uint8"]) == 2
    assert weights["uint8"] == weights["float"] and len(weights["uint8"]) == 2
