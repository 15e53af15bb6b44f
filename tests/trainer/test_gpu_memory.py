"""The memory guard's logic on the CPU (trainer/gpu_memory.py): a GPU share becomes a memory
fraction, an out-of-memory error of a capped trial names its cap and peak, and is final. What needs
CUDA (the cap really refusing memory, a packed sweep) is in tests/gpu/."""

from __future__ import annotations

import pytest
import torch

from trainer import gpu_memory
from trainer.gpu_memory import CONTEXT_BYTES, GIB, Cap, GpuMemoryCapExceeded, memory_fraction, over_cap
from trainer.trainable import final_error

H200 = 143_771 * 2**20  # bytes, as nvidia-smi reports one


@pytest.mark.parametrize("share", [0, 1, 2, 1.0])
def test_no_cap_for_cpu_trials_and_whole_gpus(share):
    assert memory_fraction(share, H200) is None


def test_a_share_becomes_its_fraction_less_the_context_reserve():
    for share in (0.5, 0.25, 0.125):
        fraction = memory_fraction(share, H200)
        assert fraction == pytest.approx(share - CONTEXT_BYTES / H200)
        assert 0 < fraction < share
    # N packed trials: their caps plus their contexts fill the card exactly, never more.
    for n in (2, 4, 8):
        assert n * (memory_fraction(1 / n, H200) * H200 + CONTEXT_BYTES) == pytest.approx(H200)


def test_a_small_share_of_a_small_card_keeps_half_of_it_for_tensors():
    eight_gb = 8 * GIB
    assert memory_fraction(0.1, eight_gb) == pytest.approx(0.05)  # 0.8 GiB share: 0.4 GiB each way
    assert memory_fraction(0.5, eight_gb) == pytest.approx(0.5 - 1 / 8)
    with pytest.raises(ValueError):
        memory_fraction(0.5, 0)


def test_on_the_cpu_nothing_is_capped_or_measured():
    assert gpu_memory.apply_cap(0.25, torch.device("cpu")) is None
    assert gpu_memory.peak_bytes(torch.device("cpu")) is None


def test_over_its_cap_a_trial_fails_naming_the_cap_and_its_peak_and_is_not_retried():
    cap = Cap(share=0.25, fraction=memory_fraction(0.25, H200), total_bytes=H200)
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                 "of 140.40 GiB of which 90.00 GiB is free.")
    err = over_cap(oom, cap=cap, peak=int(34.1 * GIB))
    assert isinstance(err, GpuMemoryCapExceeded) and isinstance(err, torch.OutOfMemoryError)
    message = str(err)
    assert "cap of 34.10 GiB (gpus_per_worker 0.25 of 140.40 GiB, less 1.00 GiB for the CUDA context)" in message
    assert "peak was 34.10 GiB" in message and "asked for 2.00 GiB more" in message
    assert "train.batch_size" in message and "resources.gpus_per_worker" in message
    final = final_error(err)
    assert final is not None and final.type_name == "GpuMemoryCapExceeded"
    assert final.reason == "over its GPU memory cap with this config" and "34.10 GiB" in final.message
    # Uncapped (a whole GPU) or another error: passed on unchanged, a plain OOM is final as before.
    assert over_cap(oom, cap=None) is oom
    assert final_error(oom).reason == "out of memory with this config"
    other = ValueError("x")
    assert over_cap(other, cap=cap) is other


def test_raise_if_over_cap_re_raises_uncapped_errors_unchanged(monkeypatch):
    oom = torch.OutOfMemoryError("CUDA out of memory.")
    monkeypatch.setattr(gpu_memory, "_cap", None)
    gpu_memory.raise_if_over_cap(oom)  # returns: the caller re-raises oom itself
    monkeypatch.setattr(gpu_memory, "_cap", Cap(share=0.5, fraction=0.49, total_bytes=H200))
    monkeypatch.setattr(gpu_memory.torch.cuda, "is_available", lambda: False)
    with pytest.raises(GpuMemoryCapExceeded, match="cap of .* peak was 0.00 GiB") as raised:
        gpu_memory.raise_if_over_cap(oom)
    assert raised.value.__cause__ is oom
