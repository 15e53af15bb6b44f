"""`sweepctl predict DIR IMAGE...`: the top classes of image files, to check a model by eye.

DIR is a pulled checkpoint (`sweepctl pull`: state.pt + its manifest) or an export (`sweepctl
export`: model.torchscript.pt or model.onnx + model_card.json); its files are checked against their
sha256 first. Images are read with Pillow (PNG, JPEG, anything Pillow opens), converted to the
model's channels (grey "L" or "RGB"; an alpha channel is dropped) and, when their size differs
from the training resolution, resized to it (bilinear). They then go in raw, as uint8 NHWC: the
preprocessing is the model's own (trainer/export.py ``RawImageClassifier``), for all three kinds.
An ONNX export runs on onnxruntime alone, without importing torch.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from service.core import checkpoint as checkpoint_format
from service.core import storage

MODEL_CARD = "model_card.json"
# What installs the ONNX parts (pyproject.toml's optional extra), said wherever one is missing.
EXPORT_EXTRA = "pip install 'sweep-service[export]'"
BATCH = 256  # images per forward pass: bounds memory whatever the number of files


class PredictError(Exception):
    """A directory that is neither a checkpoint nor an export, an image that cannot be read, a
    missing runtime: the message says which and what to do."""


@dataclass
class Predictor:
    kind: str  # "checkpoint", "torchscript" or "onnx"
    height: int  # pixels: the training resolution the model takes
    width: int
    channels: int  # 1: grey, 3: RGB
    class_names: list[str]
    run: Callable[[np.ndarray], np.ndarray]  # uint8 NHWC images → probabilities (N, classes)


def open_predictor(directory: str | Path) -> Predictor:
    directory = Path(directory)
    card_path = directory / MODEL_CARD
    try:
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    except ValueError as err:
        raise PredictError(f"{card_path}: not a model card ({err})") from None
    if isinstance(card.get("export"), dict):
        return _export(directory, card)
    if (directory / checkpoint_format.STATE).is_file():
        return _checkpoint(directory)
    raise PredictError(f"{directory} is neither a pulled checkpoint ({checkpoint_format.STATE}) nor an export "
                       f"({MODEL_CARD} with model.onnx or model.torchscript.pt): use `sweepctl pull` or `sweepctl export`")


def _checkpoint(directory: Path) -> Predictor:
    import torch

    from trainer.checkpoint import MissingStatistics, load_checkpoint
    from trainer.export import RawImageClassifier

    try:
        checkpoint_format.verify(directory)
        loaded = load_checkpoint(directory)
    except (checkpoint_format.CheckpointError, MissingStatistics) as err:
        raise PredictError(str(err)) from None
    model = RawImageClassifier(loaded.model, loaded.mean, loaded.std).eval()
    c, h, w = loaded.input_shape

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(images)).numpy()

    return Predictor("checkpoint", h, w, c, loaded.class_names, run)


def _export(directory: Path, card: dict) -> Predictor:
    fmt, name = card["export"].get("format"), card["export"].get("file")
    path = directory / str(name)
    if not path.is_file():
        raise PredictError(f"{directory}: the export's model file {name} is missing")
    expected = (card.get("files") or {}).get(path.name)
    if expected and storage.sha256_file(path) != expected:
        raise PredictError(checkpoint_format.mismatch_message([path.name], str(directory)))
    _, h, w, c = card["input"]["shape"]
    names = list(card["class_names"])
    if fmt == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            raise PredictError(f"predicting with an ONNX export needs onnxruntime, not installed here: "
                               f"{EXPORT_EXTRA} (or pip install onnxruntime)")
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        model_input = session.get_inputs()[0]
        takes_float = model_input.type == "tensor(float)"

        def run(images: np.ndarray) -> np.ndarray:
            x = images.astype(np.float32) / np.float32(255) if takes_float else images
            return session.run(None, {model_input.name: x})[0]

        return Predictor("onnx", h, w, c, names, run)
    if fmt == "torchscript":
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit calls itself deprecated; it loads fine
            model = torch.jit.load(str(path)).eval()

        def run(images: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(images)).numpy()

        return Predictor("torchscript", h, w, c, names, run)
    raise PredictError(f"{directory}: unknown export format {fmt!r} in {MODEL_CARD}")


def read_images(paths: list[str], height: int, width: int, channels: int) -> tuple[np.ndarray, list[str]]:
    """(uint8 NHWC batch, the paths that were resized). Every unreadable file is named at once."""
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise PredictError(f"the model takes {channels}-channel images; image files give grey (1) or RGB (3)")
    mode = "L" if channels == 1 else "RGB"
    images, resized, problems = [], [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert(mode)
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                    resized.append(path)
                images.append(np.asarray(image, dtype=np.uint8).reshape(height, width, channels))
        except FileNotFoundError:
            problems.append(f"{path}: no such file")
        except (UnidentifiedImageError, OSError, ValueError) as err:
            problems.append(f"{path}: not an image Pillow can read ({err})")
    if problems:
        raise PredictError(f"{len(problems)} of {len(paths)} images cannot be read:\n  " + "\n  ".join(problems))
    return np.stack(images), resized


def predict(directory: str | Path, paths: list[str], top: int = 5) -> tuple[list[dict], Predictor, list[str]]:
    """For each image: its ``top`` classes, most probable first, as {"image", "top": [{"index",
    "class", "probability"}]}. Also returns the predictor and the images that were resized."""
    if top < 1:
        raise PredictError(f"--top {top}: at least 1")
    predictor = open_predictor(directory)
    images, resized = read_images(paths, predictor.height, predictor.width, predictor.channels)
    probabilities = np.concatenate([predictor.run(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])
    k = min(top, probabilities.shape[1])
    rows = []
    for path, probs in zip(paths, probabilities):
        order = np.argsort(-probs, kind="stable")[:k]  # ties: the lower class index first
        rows.append({"image": path, "top": [{"index": int(i), "class": predictor.class_names[i],
                                             "probability": float(probs[i])} for i in order]})
    return rows, predictor, resized
