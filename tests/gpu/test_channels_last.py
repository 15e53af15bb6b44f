"""Channels-last (what the loop uses for convolutions) gives the same numbers as contiguous NCHW
under cuDNN, within floating-point tolerance: forward, backward, and two epochs of training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from gpu.gpu_helpers import MODELS, fit, spec

pytestmark = pytest.mark.gpu


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.fixture
def exact_fp32():
    """fp32 convolutions and matmuls without TF32, so that only the algorithms differ."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_channels_last_forward_and_backward_match_contiguous(name, precision, exact_fp32):
    from trainer.models import build_model

    torch.manual_seed(0)
    nchw = build_model(spec(MODELS[name]).model, (3, 32, 32), 10).cuda()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    x = torch.randn(64, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    results = []
    for model, batch in ((nchw, x), (nhwc, x.contiguous(memory_format=torch.channels_last))):
        torch.manual_seed(1)  # the same dropout masks
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(batch)
        F.cross_entropy(logits.float(), y).backward()
        results.append((logits.float(), {n: p.grad for n, p in model.named_parameters()}))
    (a, grads_a), (b, grads_b) = results
    # fp32 without TF32: only the summation order differs. bf16 keeps 8 bits of mantissa (0.4%), and
    # the two layouts round at different points.
    assert relative(b, a) < (1e-4 if precision == "fp32" else 5e-2)
    worst = max(relative(grads_b[n], grads_a[n]) for n in grads_a)
    assert worst < (1e-3 if precision == "fp32" else 2.5e-1), worst


def test_training_channels_last_ends_where_contiguous_training_does(monkeypatch):
    from trainer import loop

    s = spec(MODELS["cifar10net"], amp="off", epochs=2)
    channels_last = fit(s)
    monkeypatch.setattr(loop, "preferred_memory_format", lambda model: torch.contiguous_format)
    contiguous = fit(s)
    for a, b in zip(channels_last, contiguous):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=5e-2)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=5e-2)
        assert abs(a["val_acc"] - b["val_acc"]) < 0.05
