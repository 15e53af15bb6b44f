"""Export a trial's checkpoint as a model that runs without this code: TorchScript or ONNX, with the
trial's own preprocessing inside.

    sweepctl export NAME [--trial ID] --format torchscript|onnx -o DIR
    DIR/model.torchscript.pt | DIR/model.onnx   raw images in, class probabilities out
    DIR/model_card.json    the pull card (service/analysis/pull.py) + the input and output spec, the
                           preprocessing, class names, test metrics (if `sweepctl evaluate` ran on
                           this checkpoint) and the sha256 of each file
    DIR/README.md          five-line loading examples (PyTorch, onnxruntime)

In: a batch of images as they decode from files, NHWC at the training resolution with the dataset's
channels (1: grey, 3: RGB), uint8 in 0..255 or float32 in [0, 1]. TorchScript takes either; an ONNX
graph has one input type: uint8, or float32 when exported with ``input_dtype="float32"``.
Inside: what training did to the images (trainer/data), in the same operations: /255, NHWC → NCHW,
(x - mean) / std with the train split's per-channel statistics (recorded in the checkpoint), then
the model, which itself repeats grey to RGB and resizes where its spec says (ResNet transfer).
Out: class probabilities (softmax), (batch, classes), in the order of ``class_names``.

Every export is checked before it is kept: the written file, loaded back by its own runtime
(torch.jit.load, onnxruntime), must give the PyTorch model's probabilities within TOLERANCE at
batch sizes other than the one it was traced with.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from service.core import storage
from trainer.checkpoint import LoadedCheckpoint, MissingStatistics, load_checkpoint
from trainer.predict import EXPORT_EXTRA, MODEL_CARD

FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
INPUT_DTYPES = ("uint8", "float32")
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
# ONNX opset 18: the oldest opset torch's torch.export-based exporter writes natively (the
# TorchScript-based one is deprecated); onnxruntime runs it from version 1.14 on.
ONNX_OPSET = 18
# Largest difference of any class probability (fp32, in [0, 1]) between an export and the PyTorch
# model on the same images that still counts as equal. What we measure is ~1e-7 (sums reordered).
TOLERANCE = 1e-4
# torch.export specialises a dimension of size 1, so the example batch is 2; the checks run at 1 and
# 3, so a batch size baked into the graph would show.
EXAMPLE_BATCH = 2
VERIFY_BATCHES = (1, 3)
README = "README.md"


class ExportError(Exception):
    """An export that cannot be made (a missing package, a target directory in use) or that does
    not reproduce the PyTorch model; the message says what to do."""


def require(modules: tuple[str, ...], doing: str) -> None:
    """ExportError naming the install command when any of ``modules`` is missing (checked without
    importing them, before anything is downloaded or built)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"{doing} needs {', '.join(missing)}, not installed here: {EXPORT_EXTRA} "
                          f"(or pip install {' '.join(missing)})")


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: torchscript or onnx")
    if fmt == "onnx":  # onnxscript: what torch's ONNX exporter writes the graph with
        require(("onnx", "onnxruntime", "onnxscript"), "ONNX export")


class RawImageClassifier(nn.Module):
    """Raw images in, class probabilities out: the model with the trial's input preprocessing.

    The operations are the data pipeline's own (trainer/data ``load_dataset``: float32, /255,
    minus mean, over std), so on the same images the model sees the same numbers as in training."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)  # NHWC → NCHW (as channels-last memory)
        if images.dtype == torch.uint8:  # 0..255 → [0, 1]; float input is taken as [0, 1] already
            x = x / 255.0
        return torch.softmax(self.model((x - self.mean) / self.std), dim=1)


def raw_batch(batch: int, input_shape: tuple[int, int, int], dtype: str, seed: int) -> Tensor:
    """Random raw images (NHWC) of the model's input: what the exports are traced and checked on."""
    c, h, w = input_shape
    generator = torch.Generator().manual_seed(seed)
    if dtype == "uint8":
        return torch.randint(0, 256, (batch, h, w, c), dtype=torch.uint8, generator=generator)
    return torch.rand((batch, h, w, c), generator=generator)


# ----------------------------------------------------------------------------- the formats
def _torchscript(wrapper: RawImageClassifier, input_shape, path: Path) -> None:
    """The model traced (tracing asks nothing of a family's Python code, scripting would ask it to
    be TorchScript), inside a scripted wrapper, whose dtype branch then stays a branch: the file
    takes uint8 and float32 alike."""
    example = wrapper.mean.new_zeros((EXAMPLE_BATCH, *input_shape))
    with warnings.catch_warnings():
        # torch.jit says it is deprecated in favour of torch.export, yet its files are what
        # torch.jit.load and LibTorch (C++) read, which is why TorchScript is asked for.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(wrapper.model, example, check_trace=False)  # checked below, at other batch sizes
        scripted = torch.jit.script(RawImageClassifier(traced, wrapper.mean.flatten().tolist(),
                                                       wrapper.std.flatten().tolist()))
        torch.jit.save(scripted, str(path))


def _onnx(wrapper: RawImageClassifier, input_shape, input_dtype: str, path: Path) -> None:
    """torch.export-based ONNX export: the input's dtype is fixed (uint8 or float32), its batch
    dimension dynamic; the weights are inside the one file (external_data=False)."""
    example = raw_batch(EXAMPLE_BATCH, input_shape, input_dtype, seed=0)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        # The exporter prints its progress and warns about its own internals: not the user's news.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), str(path), dynamo=True, opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, external_data=False, verbose=False,
        )
    import onnx

    onnx.checker.check_model(str(path))  # the file is valid ONNX, not only what onnxruntime tolerates


def _check(wrapper: RawImageClassifier, input_shape, fmt: str, input_dtype: str, path: Path) -> dict:
    """Load the written file with its own runtime and compare its probabilities with the PyTorch
    model's on the same images, at batch sizes other than the traced one: max |difference|."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "deprecated": see _torchscript
            loaded = torch.jit.load(str(path))
        run = lambda x: loaded(x).numpy()  # noqa: E731
        dtypes, runtime = INPUT_DTYPES, f"torch.jit.load (torch {torch.__version__})"
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        batch_dim = session.get_inputs()[0].shape[0]
        if not isinstance(batch_dim, str):
            raise ExportError(f"the ONNX graph's batch dimension is fixed at {batch_dim}, not dynamic")
        run = lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]  # noqa: E731
        dtypes, runtime = (input_dtype,), f"onnxruntime {onnxruntime.__version__}"
    worst = 0.0
    with torch.no_grad():
        for dtype in dtypes:
            for seed, batch in enumerate(VERIFY_BATCHES, start=1):
                images = raw_batch(batch, input_shape, dtype, seed)
                worst = max(worst, float(np.abs(run(images) - wrapper(images).numpy()).max()))
    if not worst <= TOLERANCE:  # also NaN
        raise ExportError(f"the {fmt} export's probabilities differ from the PyTorch model's by {worst:.3g} "
                          f"(more than {TOLERANCE}); nothing was written")
    return {"runtime": runtime, "batch_sizes": list(VERIFY_BATCHES), "input_dtypes": list(dtypes),
            "max_abs_diff": worst, "tolerance": TOLERANCE}


# ----------------------------------------------------------------------------- the export directory
def export_checkpoint(checkpoint_dir: str | Path, pull_card: dict, out: str | Path, fmt: str, *,
                      input_dtype: str = "uint8", test_metrics: dict | None = None) -> tuple[Path, dict]:
    """Export the (verified, pulled) checkpoint in ``checkpoint_dir`` into ``out``: the model file,
    model_card.json and README.md. Written into a temporary sibling and renamed into place once
    the export matched the PyTorch model, so a failed export leaves nothing behind."""
    check_format(fmt)
    if input_dtype not in INPUT_DTYPES:
        raise ExportError(f"input dtype {input_dtype!r}: uint8 or float32")
    if fmt == "torchscript" and input_dtype != "uint8":
        raise ExportError("a TorchScript export takes uint8 and float32 input alike: leave out the input dtype")
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory; choose another -o DIR")
    try:
        loaded = load_checkpoint(checkpoint_dir)
    except MissingStatistics as err:
        raise ExportError(str(err)) from None
    # No gradients: an exported model only infers (its outputs then carry no autograd graph).
    wrapper = RawImageClassifier(loaded.model, loaded.mean, loaded.std).eval().requires_grad_(False)
    with storage.staged_directory(out) as staging:
        path = staging / FILES[fmt]
        with torch.no_grad():
            if fmt == "torchscript":
                _torchscript(wrapper, loaded.input_shape, path)
            else:
                _onnx(wrapper, loaded.input_shape, input_dtype, path)
        verified = _check(wrapper, loaded.input_shape, fmt, input_dtype, path)
        card = _card(loaded, pull_card, fmt, input_dtype, verified, test_metrics)
        (staging / README).write_text(readme(card))
        card["files"] = {p.name: storage.sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        (staging / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return out, card


def preprocessing(loaded: LoadedCheckpoint, dtypes=INPUT_DTYPES) -> dict:
    """What the exported model does to its input (of ``dtypes``), for the card."""
    gray, resize = bool(getattr(loaded.model, "gray", False)), getattr(loaded.model, "resize", None)
    scaling = {"uint8": "uint8 → float32 / 255", "float32": "float32 input taken as already in [0, 1]"}
    steps = [*(scaling[d] for d in dtypes), "NHWC → NCHW",
             "(x - mean) / std per channel, with the train split's statistics"]
    if gray:
        steps.append("grey → RGB: the one channel repeated three times (the ImageNet stem takes RGB)")
    if resize:
        steps.append(f"bilinear resize to {resize}×{resize} pixels")
    steps.append("softmax over the classes")
    source = {"checkpoint": "the train split's, recorded in the checkpoint when it was saved",
              "dataset": "the train split's, recomputed from the dataset (the checkpoint predates recording them)"}
    return {"inside_the_model": True, "steps": steps, "mean": list(loaded.mean), "std": list(loaded.std),
            "statistics": source.get(loaded.statistics, loaded.statistics), "grey_to_rgb": gray, "resize": resize}


def _card(loaded: LoadedCheckpoint, pull_card: dict, fmt: str, input_dtype: str, verified: dict,
          test_metrics: dict | None) -> dict:
    c, h, w = loaded.input_shape
    dtypes = list(INPUT_DTYPES) if fmt == "torchscript" else [input_dtype]
    card = {k: v for k, v in pull_card.items() if k not in ("files", "load")}
    card["checkpoint_files"] = pull_card.get("files", {})  # sha256 of the checkpoint it was made from
    versions = {"torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxscript

        versions.update(onnx=onnx.__version__, onnxscript=onnxscript.__version__)
    card["export"] = {"format": fmt, "file": FILES[fmt], **({"opset": ONNX_OPSET} if fmt == "onnx" else {}),
                      "made_with": versions, "verified": verified}
    card["input"] = {
        "name": INPUT_NAME, "layout": "NHWC", "shape": ["batch", h, w, c], "dtype": dtypes,
        "range": {d: ("0..255" if d == "uint8" else "0.0..1.0") for d in dtypes},
        "channels": {1: "grey", 3: "RGB"}.get(c, f"{c} channels"),
        "note": f"images at the training resolution, {h}×{w} pixels (height × width); resize them first",
    }
    card["output"] = {"name": OUTPUT_NAME, "shape": ["batch", len(loaded.class_names)], "dtype": "float32",
                      "meaning": "class probabilities (softmax; each row sums to 1), in the order of class_names"}
    card["preprocessing"] = preprocessing(loaded, dtypes)
    card["class_names"] = loaded.class_names
    card["test_metrics"] = test_metrics  # None: `sweepctl evaluate` has not evaluated this checkpoint
    return card


def readme(card: dict) -> str:
    """The export's README.md: what goes in and out, and how to load it in five lines."""
    _, h, w, c = card["input"]["shape"]
    mode = "L" if c == 1 else "RGB"
    index = "[None, :, :, None]" if c == 1 else "[None]"
    dtype = card["input"]["dtype"][0]
    scale = ".astype(np.float32) / 255" if dtype == "float32" else ""
    fmt, names = card["export"]["format"], card["class_names"]
    shown = ", ".join(f"{i}: {n}" for i, n in enumerate(names)) if len(names) <= 20 else "see model_card.json"
    torchscript = f"""```python
import numpy as np, torch
from PIL import Image
model = torch.jit.load("{FILES['torchscript']}")
image = np.array(Image.open("image.png").convert("{mode}").resize(({w}, {h}))){index}  # uint8, NHWC
probabilities = model(torch.from_numpy(image))[0]  # one per class, in class_names order
```"""
    onnx = f"""```python
import numpy as np, onnxruntime as ort
from PIL import Image
session = ort.InferenceSession("{FILES['onnx']}")
image = np.array(Image.open("image.png").convert("{mode}").resize(({w}, {h}))){index}{scale}  # NHWC
probabilities = session.run(None, {{"{INPUT_NAME}": image}})[0][0]  # one per class, in class_names order
```"""
    other = "onnx" if fmt == "torchscript" else "torchscript"
    examples = {"torchscript": ("PyTorch", torchscript), "onnx": ("onnxruntime", onnx)}
    first, second = examples[fmt], examples[other]
    return f"""# {card['sweep']} / trial {card['trial_id']} ({fmt})

Exported by `sweepctl export` from {card['checkpoint']} (epoch {card['epoch']}).

- **In** `{INPUT_NAME}`: images, NHWC `(batch, {h}, {w}, {c})`, {card['input']['channels']}, \
{' or '.join(f'{d} in {card["input"]["range"][d]}' for d in card['input']['dtype'])}, at {h}×{w} pixels.
- **Inside**: {'; '.join(card['preprocessing']['steps'])}.
- **Out** `{OUTPUT_NAME}`: `(batch, {len(names)})` class probabilities. Classes: {shown}.
- `model_card.json`: the trial, its config and metrics, the preprocessing, the sha256 of each file.

## {first[0]}

{first[1]}

## {second[0]}

The same model as `{FILES[other]}`: `sweepctl export {card['sweep']} --trial {card['trial_id']} --format {other} -o DIR`, then

{second[1]}

Check it by eye: `sweepctl predict . image.png` (top classes of any PNG/JPEG).
"""
