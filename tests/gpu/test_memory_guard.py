"""The memory guard on a real GPU: a trial's share caps its process's CUDA memory, and a trial over
its cap fails at once (final), naming the cap and its peak, while the trial beside it finishes."""

from __future__ import annotations

import pytest
import torch

from gpu.gpu_helpers import MODELS, spec
from service.core.record import SweepStore
from trainer import gpu_memory

pytestmark = pytest.mark.gpu


def test_a_fractional_share_caps_the_process_and_a_whole_gpu_lifts_the_cap():
    cuda = torch.device("cuda")
    total = torch.cuda.get_device_properties(cuda).total_memory
    torch.cuda.empty_cache()  # what earlier tests in this process cached is not this test's
    try:
        cap = gpu_memory.apply_cap(0.25, cuda)
        assert cap.fraction == gpu_memory.memory_fraction(0.25, total) and cap.total_bytes == total
        under = torch.empty(1 << 30, dtype=torch.uint8, device=cuda)  # 1 GiB: well under
        del under
        with pytest.raises(torch.OutOfMemoryError) as refused:
            torch.empty(cap.cap_bytes + (1 << 30), dtype=torch.uint8, device=cuda)
        capped = gpu_memory.over_cap(refused.value)
        assert isinstance(capped, gpu_memory.GpuMemoryCapExceeded) and "cap of" in str(capped)
        assert 0 < gpu_memory.peak_bytes(cuda) <= cap.cap_bytes
        assert gpu_memory.apply_cap(1, cuda) is None  # a later trial with a whole GPU: no cap
        torch.cuda.empty_cache()
        if torch.cuda.mem_get_info(cuda)[0] > cap.cap_bytes + (2 << 30):
            # the cap is gone: more than it fits now
            assert torch.empty(cap.cap_bytes + (1 << 30), dtype=torch.uint8, device=cuda).numel() > cap.cap_bytes
    finally:
        gpu_memory.apply_cap(1, cuda)
        torch.cuda.empty_cache()


def test_a_trial_over_its_cap_fails_at_once_naming_cap_and_peak_and_the_other_goes_on(ray_gpu, tmp_path):
    from trainer.driver.sweep import run_sweep

    # A 2% share of the card: a cap of about 1.8 GiB on an H200 (2.8 GiB less 1 GiB of context).
    # Batch 64 fits in it; a batch of 16,384 CIFAR-shaped images through 128 filters does not.
    model = {**MODELS["seed-000 CNN"], "filters": 128}
    s = spec(model, epochs=1, samples=20_000, gpus=0.02, storage=str(tmp_path), name="over-cap",
             search={"algorithm": "grid"}, train={"batch_size": {"grid": [64, 16384]}})
    index = run_sweep(s, echo=lambda line: None)
    assert index.trial_states == {"terminated": 1, "error": 1}, index.trial_states
    trials = {t.config["train.batch_size"]: t for t in SweepStore(s.storage.uri, s.name).read_trials(index)}
    failed, fine = trials[16384], trials[64]
    assert failed.error.type == "GpuMemoryCapExceeded" and failed.error.final and failed.restarts == 0
    assert "GPU memory cap of" in failed.error.message and "peak was" in failed.error.message
    assert "gpus_per_worker 0.02" in failed.error.message
    assert fine.status == "terminated" and fine.history[-1].gpu_peak_bytes > 0
