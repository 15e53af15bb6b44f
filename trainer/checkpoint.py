"""Load a trial checkpoint (format: service/core/checkpoint.py) back into a model.

    model, spec = load_model("runs/quickstart/<trial>/checkpoint_000007")

Weights load with ``weights_only=True``: a checkpoint is data, never code. Loading is
self-contained: the architecture is rebuilt without the weights a ResNet spec transfers from
(``pretrained: imagenet`` would download them, ``weights_uri`` re-fetch them) and then gets the
checkpoint's own state, which holds every weight, so an offline node loads any checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from service.core import checkpoint as checkpoint_format
from service.core.spec import SweepSpec
from trainer.models import build_model


@dataclass
class LoadedCheckpoint:
    """A checkpoint's model (eval mode, CPU unless asked) and what serving it needs."""

    model: nn.Module
    spec: SweepSpec  # the trial's concrete spec
    input_shape: tuple[int, int, int]  # (C, H, W) of the training images
    class_names: list[str]
    epoch: int
    mean: tuple[float, ...]  # per channel, raw pixel scale ([0, 1] for image data): the train split's
    std: tuple[float, ...]
    statistics: str  # where mean/std come from: "checkpoint", or "dataset" (recomputed for an older checkpoint)


class MissingStatistics(Exception):
    """An older checkpoint (no recorded normalisation statistics) whose dataset is not at hand to
    recompute them from."""


def load_spec(checkpoint_dir: str | Path) -> SweepSpec:
    return SweepSpec.model_validate_json(checkpoint_format.read_spec_json(checkpoint_dir))


def load_model(checkpoint_dir: str | Path, map_location: str | torch.device = "cpu"):
    """(model in eval mode, the trial's concrete spec). Rebuilds the architecture from the spec."""
    loaded = load_checkpoint(checkpoint_dir, map_location, statistics=False)
    return loaded.model, loaded.spec


def load_checkpoint(checkpoint_dir: str | Path, map_location: str | torch.device = "cpu", *,
                    statistics: bool = True) -> LoadedCheckpoint:
    """The model with its input shape, class names and normalisation statistics.

    Statistics come from the checkpoint (written since exports exist). An older checkpoint has
    none: they are recomputed from the dataset exactly as training did (same data spec and seed,
    hence the same train split), which needs the dataset's files at ``data.path`` and never
    downloads them. ``statistics=False`` skips that (``load_model`` needs no statistics)."""
    spec = load_spec(checkpoint_dir)
    state = torch.load(Path(checkpoint_dir) / checkpoint_format.STATE, map_location=map_location, weights_only=True)
    input_shape = tuple(int(d) for d in state["input_shape"])
    model = build_model(spec.model, input_shape, len(state["class_names"]), transfer_weights=False)
    model.load_state_dict(state["model"])
    mean, std, source = (), (), "none"
    if "normalization" in state:
        mean, std, source = tuple(state["normalization"]["mean"]), tuple(state["normalization"]["std"]), "checkpoint"
    elif statistics:
        mean, std = _recomputed_statistics(spec)
        source = "dataset"
    return LoadedCheckpoint(model.eval(), spec, input_shape, list(state["class_names"]), int(state["epoch"]),
                            mean, std, source)


def _recomputed_statistics(spec: SweepSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from trainer.data import load_dataset

    def no_download(name: str, root: Path) -> None:
        raise FileNotFoundError(f"{name}'s files are not at {root}: put them there (nothing is downloaded)")

    try:
        data = load_dataset(spec.data, spec.seed, downloader=no_download)
    except (OSError, ValueError) as err:  # missing files, a bad format (DataFormatError is a ValueError)
        raise MissingStatistics(
            f"this checkpoint predates recorded normalisation statistics and its dataset ({spec.data.name} at "
            f"{spec.data.path}) cannot be read to recompute them: {err}") from None
    return data.mean, data.std
