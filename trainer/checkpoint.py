"""Load a trial checkpoint (format: service/core/checkpoint.py) back into a model.

    model, spec = load_model("runs/quickstart/<trial>/checkpoint_000007")

Weights load with ``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from service.core import checkpoint as checkpoint_format
from service.core.spec import SweepSpec
from trainer.models import build_model


def load_spec(checkpoint_dir: str | Path) -> SweepSpec:
    return SweepSpec.model_validate_json(checkpoint_format.read_spec_json(checkpoint_dir))


def load_model(checkpoint_dir: str | Path, map_location: str | torch.device = "cpu"):
    """(model in eval mode, the trial's concrete spec). Rebuilds the architecture from the spec."""
    spec = load_spec(checkpoint_dir)
    state = torch.load(Path(checkpoint_dir) / checkpoint_format.STATE, map_location=map_location, weights_only=True)
    model = build_model(spec.model, tuple(state["input_shape"]), len(state["class_names"]))
    model.load_state_dict(state["model"])
    return model.eval(), spec
