"""`make gpu-check` on a machine without CUDA (CI, the development machines): it checks that the
GPU check can run (imports, tests/gpu collects, every stage's specs validate, FLOPs count), says
"no CUDA device" and exits 0, so a GPU session finds a script that works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: make gpu-check would run for real")
def test_make_gpu_check_without_cuda_checks_its_plan_and_exits_0(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["make", "--no-print-directory", "gpu-check", f"GPU_PYTHON={sys.executable}", f"GPU_CHECK_OUT={out}",
         f"GPU_WHEELS={tmp_path / 'no-wheels'}", f"GPU_SITE={tmp_path / 'site'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "no CUDA device" in done.stdout
    assert "tests/gpu: " in done.stdout and "tests collect, all marked gpu" in done.stdout
    plan = [line for line in done.stdout.splitlines() if line.startswith("plan: ")]
    assert [line.split(":")[1].strip() for line in plan] == ["models"] * 4 + ["packing", "study"]
    assert "12 trials of small_resnet, asha, ≤ 20 epochs, 50,000 images" in plan[-1]
    table = (out / "gpu-check.md").read_text()
    assert table.startswith("| check | setting | result | notes |\n|---|---|---|---|\n")
    assert table.count("| plan |") == 6
