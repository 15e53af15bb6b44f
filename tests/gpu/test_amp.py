"""Mixed precision on a CUDA GPU: ``amp: auto`` → bf16 where the GPU has it, ``amp: fp16`` with
GradScaler (its scale reported, an overflow step skipped rather than applied)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from gpu.gpu_helpers import MODELS, fit, spec

pytestmark = pytest.mark.gpu
STUDY_MODELS = ["seed-000 CNN", "cifar10net"]


def falls(reports: list[dict], key: str) -> bool:
    return reports[-1][key] < reports[0][key]


def test_amp_auto_picks_bf16_on_a_gpu_that_has_it():
    from trainer.loop import autocast_dtype

    cuda = torch.device("cuda")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert autocast_dtype("auto", cuda) == expected
    assert autocast_dtype("fp16", cuda) == torch.float16 and autocast_dtype("off", cuda) is None


@pytest.mark.parametrize("model", STUDY_MODELS)
def test_amp_auto_trains_and_the_loss_falls_over_two_epochs(model):
    reports = fit(spec(MODELS[model], amp="auto", epochs=2))
    assert len(reports) == 2 and falls(reports, "train_loss") and falls(reports, "val_loss")
    assert all(r["gpu_peak_bytes"] > 0 for r in reports)
    if torch.cuda.is_bf16_supported():
        assert "grad_scale" not in reports[0]  # bf16 needs no loss scaling


@pytest.mark.parametrize("model", STUDY_MODELS)
def test_fp16_trains_with_grad_scaler_and_reports_its_scale(model):
    reports = fit(spec(MODELS[model], amp="fp16", epochs=2))
    assert falls(reports, "train_loss") and falls(reports, "val_loss")
    for r in reports:
        scale = r["grad_scale"]
        assert scale > 0 and math.log2(scale).is_integer()  # starts at 2**16, halves or doubles


def test_an_fp16_overflow_step_is_skipped_not_applied():
    """The loop's own parts: its fused optimizer and a GradScaler, as fit builds them."""
    from trainer.loop import _optimizer
    from trainer.models import build_model, preferred_memory_format

    s = spec(MODELS["seed-000 CNN"], amp="fp16")
    torch.manual_seed(0)
    model = build_model(s.model, (3, 32, 32), 10)
    model = model.to("cuda", memory_format=preferred_memory_format(model))
    optimizer = _optimizer(s, list(model.parameters()))
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(64, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device="cuda")

    def step(poison: bool) -> None:
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss * (float("inf") if poison else 1.0)).backward()
        scaler.step(optimizer)
        scaler.update()

    step(poison=False)  # the optimizer has state now
    params = lambda: {n: p.detach().clone() for n, p in model.named_parameters()}  # noqa: E731  (BN buffers move in forward)
    weights, state = params(), copy.deepcopy(optimizer.state_dict())
    scale = scaler.get_scale()
    step(poison=True)
    assert scaler.get_scale() == scale * 0.5  # backed off
    assert all(torch.equal(weights[k], v) for k, v in params().items())  # not applied
    after = optimizer.state_dict()["state"]
    for key, moments in state["state"].items():
        assert torch.equal(after[key]["exp_avg"], moments["exp_avg"])
    step(poison=False)  # and training goes on
    assert not all(torch.equal(weights[k], v) for k, v in params().items())
