"""Four trials packed on one GPU (gpus_per_worker: 0.25) run at the same time, each capped and
measured; the checkpoints they wrote on the GPU load, evaluate and pull on a CPU-only process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

from gpu.gpu_helpers import MODELS, spec
from service.core.record import SweepStore
from trainer import gpu_memory

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]

ON_THE_CPU = """
import json, sys, torch
assert not torch.cuda.is_available(), "this process must see no GPU"
from service.analysis.pull import pull_checkpoint
from service.core.record import SweepStore
from trainer import load_model
from trainer.data import load_dataset
from trainer.evaluate import evaluate_model
uri, name, out = sys.argv[1:]
store = SweepStore(uri, name)
index = store.read_index()
model, spec = load_model(index.best.checkpoint)          # straight from storage
pulled, card = pull_checkpoint(store, index, None, out)   # sweepctl pull
again, _ = load_model(pulled)
assert all(p.device.type == "cpu" for p in again.parameters())
assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
data = load_dataset(spec.data, spec.seed)
results = evaluate_model(again, data.test_x, data.test_y, data.class_names)
print(json.dumps({"trial": card["trial_id"], "test_accuracy": results.accuracy, "test_loss": results.loss}))
"""


def test_four_quarter_gpu_trials_run_at_once_and_their_checkpoints_load_on_the_cpu(ray_gpu, tmp_path):
    from trainer.driver.sweep import run_sweep

    s = spec(MODELS["seed-000 CNN"], epochs=3, samples=16_384, gpus=0.25, storage=str(tmp_path), name="packed",
             search={"algorithm": "grid"}, checkpoint={"every": 1},
             train={"optimizer": {"name": "adam", "lr": {"grid": [3e-4, 1e-3, 2e-3, 3e-3]}}})
    index = run_sweep(s, echo=lambda line: None)
    assert index.trial_states == {"terminated": 4}, index.trial_states
    trials = SweepStore(s.storage.uri, s.name).read_trials(index)
    when = lambda iso: datetime.fromisoformat(iso.replace("Z", "+00:00"))  # noqa: E731
    starts, ends = [when(t.started_at) for t in trials], [when(t.updated_at) for t in trials]
    assert max(starts) < min(ends), "the four trials' running intervals do not overlap"
    total = torch.cuda.get_device_properties(0).total_memory
    cap = gpu_memory.memory_fraction(0.25, total) * total
    for trial in trials:
        peaks = [h.gpu_peak_bytes for h in trial.history]
        assert all(0 < p <= cap for p in peaks) and peaks == sorted(peaks)  # a running maximum, under the cap

    out = tmp_path / "pulled"
    done = subprocess.run([sys.executable, "-c", ON_THE_CPU, s.storage.uri, s.name, str(out)], cwd=ROOT,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads(done.stdout.strip().splitlines()[-1])
    assert evaluated["trial"] == index.best_trial and evaluated["test_accuracy"] > 0.2  # 10 classes: chance is 0.1
