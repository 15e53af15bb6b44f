"""Handing the model on (trainer/export.py, trainer/predict.py, trainer/checkpoint.py), without Ray:
every model family trained one epoch by the real loop (``fit``) on tiny data in the official formats,
exported to TorchScript and ONNX, fed raw uint8 images; self-contained loading with downloads made
impossible; `sweepctl predict` against `evaluate` on the digits test split; `sweepctl export`.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import ray.train
import torch

from conftest import BASE_SPEC, deep_update
from official_formats import write_cifar10, write_mnist
from service.cli import main as sweepctl
from service.core import checkpoint as checkpoint_format
from service.core import storage
from service.core.record import EpochResult, Objective, SweepStore, TrialSummary, new_index
from service.core.spec import SweepSpec, data_spec
from trainer.checkpoint import load_checkpoint, load_model
from trainer.data import load_dataset
from trainer.data.formats import read_raw
from trainer.evaluate import evaluate_model
from trainer.export import TOLERANCE, ExportError, check_format, export_checkpoint
from trainer.loop import fit

pytestmark = [
    pytest.mark.slow,  # trains (no Ray starts: ray.train is imported for its Checkpoint class only)
    # torch calls TorchScript deprecated; loading the exported file is what this module checks
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning"),
]

# Every family of the zoo, small. Grey 28×28 (tiny MNIST) or RGB 32×32 (tiny CIFAR-10), both uint8
# as published; the frozen ImageNet transfer also repeats grey to RGB and resizes inside.
FAMILIES = {
    "mlp": ("mnist", {"name": "mlp", "hidden_sizes": [32, 16], "batchnorm": True, "dropout": 0.1}),
    "cnn": ("mnist", {"name": "cnn", "num_conv_layers": 2, "filters": 8, "num_fc_layers": 2, "hidden_size": 16,
                      "batchnorm": True, "dropout": 0.2}),
    "cifar10net": ("cifar10", {"name": "cifar10net", "conv_channels": [8, 16], "fc1": 32, "fc2": 16}),
    "small_resnet": ("cifar10", {"name": "small_resnet", "h_1": 8, "h_2": 16, "dropout": 0.1}),
    "resnet18-cifar-stem": ("cifar10", {"name": "resnet", "depth": 18, "cifar_stem": True}),
    "resnet18-frozen-imagenet": ("mnist", {"name": "resnet", "depth": 18, "mode": "frozen", "pretrained": "imagenet",
                                           "resize": 32, "head": "mlp", "head_widths": [16]}),
}


class Session:
    """What ``fit`` needs of ``ray.tune``: no checkpoint to start from; each reported one kept."""

    Checkpoint = ray.train.Checkpoint

    def __init__(self, trial_dir: Path):
        self.trial_dir, self.checkpoints = trial_dir, []

    def get_checkpoint(self):
        return None

    def report(self, metrics: dict, checkpoint=None) -> None:
        if checkpoint is not None:
            target = self.trial_dir / f"checkpoint_{len(self.checkpoints):06d}"
            shutil.copytree(checkpoint.path, target)
            self.checkpoints.append((target, dict(metrics)))


def stand_in_imagenet_weights(torch_home: Path) -> None:
    """torchvision's ResNet-18 ImageNet file, as its cache holds it, with random weights: training a
    `pretrained: imagenet` trial then reads it from the cache instead of downloading it."""
    import torchvision

    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), folder / url.rsplit("/", 1)[1])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The data sets (tiny MNIST and CIFAR-10 files; digits is bundled) and a torch home holding
    stand-in ImageNet weights, for the whole module."""
    root = tmp_path_factory.mktemp("export")
    write_mnist(root / "mnist", num_train=40, num_test=12, seed=1)
    write_cifar10(root / "cifar", per_batch=8, num_test=12)  # 40 training images (8 per batch file)
    stand_in_imagenet_weights(root / "torch-home")
    return root


@pytest.fixture(scope="module")
def trained(world):
    """family → (checkpoint directory, its spec); each family trained once, when first asked for."""
    cache: dict[str, tuple[Path, SweepSpec]] = {}
    patch = pytest.MonkeyPatch()
    patch.setenv("TORCH_HOME", str(world / "torch-home"))

    def get(family: str, data: dict | None = None, name: str | None = None):
        key = name or family
        if key not in cache:
            kind, model = FAMILIES.get(family, (None, None))
            data = data or {"name": kind, "path": str(world / ("mnist" if kind == "mnist" else "cifar")),
                            "val_fraction": 0.2}
            raw = deep_update(BASE_SPEC, {"name": key.replace("_", "-"), "storage": {"uri": str(world / "runs")},
                                          "data": data, "train": {"epochs": 1}})
            raw["model"] = model  # the family's model alone, not merged into the base's CNN
            spec = SweepSpec.model_validate(raw)
            trial_dir = world / "runs" / spec.name / "t_00000"
            trial_dir.mkdir(parents=True)
            session = Session(trial_dir)
            fit(spec, session)
            cache[key] = (session.checkpoints[-1][0], spec)
        return cache[key]

    yield get
    patch.undo()


def raw_test_images(spec: SweepSpec) -> torch.Tensor:
    """The test split as published (uint8 NHWC): what an image file of it decodes to."""
    raw = read_raw(spec.data, spec.seed, None)
    x = raw.test_x
    if x.dtype != torch.uint8:  # digits: float k/16 in [0, 1] → the 8-bit pixels a PNG of it holds
        x = (x * 255).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()


def pytorch_probabilities(checkpoint: Path, spec: SweepSpec) -> tuple[np.ndarray, object]:
    """The trained model (load_model) on the normalised test images exactly as training feeds them
    (load_dataset: the train split's statistics), softmaxed."""
    model, _ = load_model(checkpoint)
    data = load_dataset(spec.data, spec.seed)
    with torch.no_grad():
        return model(data.test_x).softmax(1).numpy(), data


def pull_card(checkpoint: Path, spec: SweepSpec) -> dict:
    """What `sweepctl pull` writes for it (service/analysis/pull.py's card; the export builds on it)."""
    manifest = checkpoint_format.verify(checkpoint)
    return {"sweep": spec.name, "trial_id": "t_00000", "checkpoint": str(checkpoint), "epoch": manifest["epoch"],
            "objective": {"metric": "val_acc", "mode": "max"}, "config": {}, "metrics": manifest["metrics"],
            "spec": json.loads(spec.model_dump_json()),
            "files": {p.name: storage.sha256_file(p) for p in sorted(checkpoint.iterdir())}}


# ---------------------------------------------------------------------------- 1. every family, both formats
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_with_its_preprocessing_inside_and_matches_pytorch(trained, family, fmt, tmp_path):
    checkpoint, spec = trained(family)
    reference, data = pytorch_probabilities(checkpoint, spec)
    raw = raw_test_images(spec)  # 12 images: neither the traced batch (2) nor the checked ones (1, 3)
    # The normalised images are the raw ones through the recorded statistics, as the export does it.
    loaded = load_checkpoint(checkpoint)
    assert loaded.statistics == "checkpoint" and loaded.mean == pytest.approx(data.mean) and loaded.std == pytest.approx(data.std)

    out, card = export_checkpoint(checkpoint, pull_card(checkpoint, spec), tmp_path / "export", fmt)
    assert sorted(p.name for p in out.iterdir()) == sorted([card["export"]["file"], "model_card.json", "README.md"])
    if fmt == "torchscript":
        model = torch.jit.load(str(out / "model.torchscript.pt"))
        with torch.no_grad():
            got = model(raw).numpy()
            as_float = model(raw.float() / 255).numpy()  # float32 in [0, 1]: the same model
        assert np.abs(as_float - reference).max() <= TOLERANCE
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        (model_input,) = session.get_inputs()
        assert model_input.type == "tensor(uint8)" and isinstance(model_input.shape[0], str)  # dynamic batch
        assert model_input.shape[1:] == list(raw.shape[1:])
        got = session.run(None, {"images": raw.numpy()})[0]
    worst = float(np.abs(got - reference).max())
    print(f"max |Δ probability| {family:>26} {fmt:>11}: {worst:.2e}")
    assert got.shape == reference.shape and worst <= TOLERANCE
    assert (got.argmax(1) == reference.argmax(1)).all()

    assert card["input"]["shape"] == ["batch", *raw.shape[1:]] and card["class_names"] == data.class_names
    assert card["preprocessing"]["mean"] == pytest.approx(data.mean)
    assert card["preprocessing"]["grey_to_rgb"] == (family == "resnet18-frozen-imagenet")
    assert card["export"]["verified"]["max_abs_diff"] <= TOLERANCE
    assert card["files"] == {p.name: storage.sha256_file(p) for p in out.iterdir() if p.name != "model_card.json"}
    # The card's spec holds what applies to its dataset and scheduler only (a FIFO MNIST/CIFAR run)
    assert set(card["spec"]["data"]) == {"name", "val_fraction", "val_split", "augment", "path", "sha256", "download"}
    assert card["spec"]["scheduler"] == {"name": "fifo"}


# ---------------------------------------------------------------------------- 2. self-contained loading
@pytest.fixture
def no_downloads(monkeypatch, tmp_path):
    """Downloads made impossible: an empty torch home, torch.hub's downloader and every socket
    connection raise. Yields the list of attempts."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access attempted while downloads are impossible")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture(scope="module")
def imagenet_checkpoint(trained):
    """The frozen ImageNet-transfer trial, trained (with the stand-in weights) before any test blocks downloads."""
    return trained("resnet18-frozen-imagenet")


def test_a_pretrained_imagenet_checkpoint_loads_exports_and_predicts_with_downloads_impossible(
        imagenet_checkpoint, no_downloads, tmp_path):
    from trainer.models import build_model
    from trainer.predict import predict

    checkpoint, spec = imagenet_checkpoint
    # Without the fix, building the architecture would try to download the ImageNet weights:
    with pytest.raises(OSError, match="network access attempted"):
        build_model(spec.model, (1, 28, 28), 10)
    assert no_downloads
    no_downloads.clear()

    model, loaded_spec = load_model(checkpoint)
    assert loaded_spec.model.pretrained == "imagenet"
    data = load_dataset(spec.data, spec.seed)
    results = evaluate_model(model, data.test_x, data.test_y, data.class_names)  # what `sweepctl evaluate` runs
    assert len(results.labels) == 12
    out, _ = export_checkpoint(checkpoint, pull_card(checkpoint, spec), tmp_path / "ts", "torchscript")
    from PIL import Image

    Image.fromarray(raw_test_images(spec)[0, :, :, 0].numpy(), mode="L").save(tmp_path / "x.png")
    rows, _, _ = predict(out, [str(tmp_path / "x.png")], top=1)
    assert rows[0]["top"][0]["class"] == data.class_names[int(results.preds[0])]
    assert no_downloads == []


def test_a_weights_uri_checkpoint_loads_after_the_weights_file_is_gone(tmp_path, no_downloads):
    import torchvision

    from trainer.loop import save_checkpoint
    from trainer.models import build_model

    donor = tmp_path / "backbone.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), donor)
    spec = SweepSpec.model_validate({**BASE_SPEC, "model": {"name": "resnet", "depth": 18, "mode": "frozen",
                                                             "weights_uri": str(donor)}})
    model = build_model(spec.model, (3, 16, 16), 4)

    class Data:  # what save_checkpoint reads of a SplitData
        input_shape, class_names, mean, std = (3, 16, 16), list("abcd"), (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    (tmp_path / "ckpt").mkdir()
    save_checkpoint(tmp_path / "ckpt", spec, Data, model, optimizer, torch.amp.GradScaler("cpu", enabled=False), 1, {})
    donor.unlink()  # an offline node: the weights file is not there (nor reachable)
    loaded = load_checkpoint(tmp_path / "ckpt")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert (loaded.mean, loaded.std, loaded.statistics) == (Data.mean, Data.std, "checkpoint")
    assert no_downloads == []


def test_an_older_checkpoint_without_statistics_gets_them_recomputed_or_says_why_not(digits, tmp_path):
    from trainer.checkpoint import MissingStatistics

    checkpoint, spec, _, _ = digits
    old = tmp_path / "old"
    shutil.copytree(checkpoint, old)
    state = torch.load(old / "state.pt", weights_only=True)
    del state["normalization"]  # as checkpoints were written before exports existed
    torch.save(state, old / "state.pt")
    data = load_dataset(spec.data, spec.seed)
    loaded = load_checkpoint(old)
    assert (loaded.statistics, loaded.mean, loaded.std) == ("dataset", data.mean, data.std)

    gone = spec.model_copy(update={"data": data_spec(name="mnist", path=str(tmp_path / "no"), val_fraction=spec.data.val_fraction)})
    (old / "spec.json").write_text(gone.model_dump_json())
    with pytest.raises(MissingStatistics, match="predates recorded normalisation statistics.*cannot be read"):
        load_checkpoint(old)


# ---------------------------------------------------------------------------- 3. predict = evaluate, digits
@pytest.fixture(scope="module")
def digits(trained, tmp_path_factory):
    """A CNN trained one epoch on the digits, its test split written as 8-bit PNGs, and what
    `evaluate` predicts for that split."""
    from PIL import Image

    checkpoint, spec = trained("cnn", data={"name": "digits", "val_fraction": 0.2}, name="digits-cnn")
    folder = tmp_path_factory.mktemp("digits-png")
    paths = []
    for i, image in enumerate(raw_test_images(spec)[..., 0].numpy()):
        paths.append(str(folder / f"test_{i:04d}.png"))
        Image.fromarray(image, mode="L").save(paths[-1])
    model, _ = load_model(checkpoint)
    data = load_dataset(spec.data, spec.seed)
    return checkpoint, spec, paths, evaluate_model(model, data.test_x, data.test_y, data.class_names)


def test_predict_on_pngs_of_the_digits_test_split_gives_evaluates_top1(digits, tmp_path, capsys):
    checkpoint, spec, paths, results = digits
    expected = [results.class_names[i] for i in results.preds]
    assert 0.3 < results.accuracy < 1  # it learned something, and there are mistakes to agree on
    onnx, _ = export_checkpoint(checkpoint, pull_card(checkpoint, spec), tmp_path / "onnx", "onnx")
    # float32 input in [0, 1]: predict scales the decoded pixels for it
    onnx_float, card = export_checkpoint(checkpoint, pull_card(checkpoint, spec), tmp_path / "onnx-float", "onnx",
                                         input_dtype="float32")
    assert card["input"]["dtype"] == ["float32"] and "astype(np.float32) / 255" in (onnx_float / "README.md").read_text()
    for directory in (checkpoint, onnx, onnx_float):  # a pulled checkpoint, and exports
        assert sweepctl(["predict", str(directory), *paths, "--json", "--top", "3"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["image"] for r in rows] == paths
        assert [r["top"][0]["class"] for r in rows] == expected, directory
        assert all(len(r["top"]) == 3 and r["top"][0]["probability"] >= r["top"][1]["probability"] for r in rows)
    # The table a user reads: one line per image, its top classes with their probabilities.
    assert sweepctl(["predict", str(onnx), *paths[:2], "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and re.fullmatch(rf"{re.escape(paths[0])}  {expected[0]} \d+\.\d% +\S+ \d+\.\d%", lines[0])


def test_predict_resizes_converts_and_refuses_what_it_cannot_read(digits, tmp_path, capsys):
    from PIL import Image

    checkpoint, _, paths, results = digits
    big = tmp_path / "big.jpg"  # RGB, 32×32, JPEG: converted to grey and resized to 8×8
    Image.open(paths[0]).convert("RGB").resize((32, 32), Image.Resampling.NEAREST).save(big, quality=100)
    assert sweepctl(["predict", str(checkpoint), str(big), "--top", "1"]) == 0
    captured = capsys.readouterr()
    assert "1 of 1 images resized to the model's 8×8 pixels" in captured.err and captured.out.startswith(str(big))

    (tmp_path / "notes.txt").write_text("not an image")
    assert sweepctl(["predict", str(checkpoint), str(tmp_path / "notes.txt"), str(tmp_path / "gone.png")]) == 2
    err = capsys.readouterr().err
    assert "2 of 2 images cannot be read" in err and "notes.txt: not an image Pillow can read" in err
    assert "gone.png: no such file" in err and "Traceback" not in err
    assert sweepctl(["predict", str(tmp_path), paths[0]]) == 2
    assert "is neither a pulled checkpoint" in capsys.readouterr().err

    tampered = tmp_path / "tampered"
    shutil.copytree(checkpoint, tampered)
    state = bytearray((tampered / "state.pt").read_bytes())
    state[-1] ^= 0xFF
    (tampered / "state.pt").write_bytes(bytes(state))
    assert sweepctl(["predict", str(tampered), paths[0]]) == 2
    assert "checksum mismatch for state.pt" in capsys.readouterr().err


def test_a_missing_onnx_package_is_said_with_what_to_install_before_anything_is_read(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ExportError, match=r"ONNX export needs onnxruntime.*pip install 'sweep-service\[export\]'"):
        check_format("onnx")
    check_format("torchscript")  # needs nothing more
    # The verb says so before it even looks for the sweep.
    assert sweepctl(["export", "no-such-sweep", "--storage", str(tmp_path), "--format", "onnx", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'sweep-service[export]'" in err and "no-such-sweep" not in err


# ---------------------------------------------------------------------------- 4. the verb
def test_sweepctl_export_from_storage_and_through_the_service_with_a_card_and_a_readme_that_runs(
        digits, tmp_path, capsys, monkeypatch):
    from live_service import serve
    from service.control.api import create_app
    from service.control.backends import StorageBackend

    checkpoint, spec, paths, results = digits
    runs = tmp_path / "runs"  # a sweep record around the trained checkpoint, as the driver writes it
    store = SweepStore(str(runs), "digits-cnn")
    shutil.copytree(checkpoint, runs / "digits-cnn" / "t_00000" / checkpoint.name)
    uri = store.path("t_00000", checkpoint.name)
    index = new_index("digits-cnn", Objective(metric="val_acc", mode="max"), max_epochs=1, num_trials=1, attempt=1)
    index.status, index.best_trial = "finished", "t_00000"
    index.trials = [TrialSummary(trial_id="t_00000", status="terminated", config={"model.filters": 8}, epochs=1,
                                 best=EpochResult(epoch=1, val_acc=0.5), checkpoint=uri)]
    storage.write_text_atomic(store.index_uri, index.model_dump_json())
    # `sweepctl evaluate` ran on this checkpoint: its numbers go into the card
    storage.write_json_atomic(storage.join(store.report_uri, "evaluation.json"), {
        "trial_id": "t_00000", "checkpoint": uri, "test_accuracy": results.accuracy, "test_loss": results.loss,
        "test_size": len(results.labels)})

    for fmt in ("onnx", "torchscript"):
        out = tmp_path / fmt
        assert sweepctl(["export", "digits-cnn", "--storage", str(runs), "--format", fmt, "-o", str(out)]) == 0
        said = capsys.readouterr().out
        assert f"exported trial t_00000 (epoch 1) as {fmt}" in said and "matches PyTorch within" in said
        card = json.loads((out / "model_card.json").read_text())
        assert card["checkpoint"] == uri and card["config"] == {"model.filters": 8} and card["spec"]["name"] == "digits-cnn"
        assert card["test_metrics"] == {"accuracy": results.accuracy, "loss": results.loss, "images": len(results.labels)}
        assert set(card["checkpoint_files"]) == {"state.pt", "spec.json", "checkpoint.json"}
        assert card["input"]["dtype"] == (["uint8"] if fmt == "onnx" else ["uint8", "float32"])
        # The README's five-line example for this format runs as written, on a PNG of the test split.
        readme = (out / "README.md").read_text()
        blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
        assert len(blocks) == 2 and all(len(b.strip().splitlines()) == 5 for b in blocks)
        shutil.copy(paths[0], out / "image.png")
        monkeypatch.chdir(out)
        scope: dict = {}
        exec(blocks[0], scope)  # noqa: S102 - our own generated example
        assert int(np.asarray(scope["probabilities"]).argmax()) == int(results.preds[0])
        (out / "image.png").unlink()

    # Refused: a directory in use (nothing changed), then a float32 input for TorchScript.
    assert sweepctl(["export", "digits-cnn", "--storage", str(runs), "--format", "onnx", "-o", str(tmp_path / "onnx")]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert sweepctl(["export", "digits-cnn", "--storage", str(runs), "--format", "torchscript", "--input-dtype",
                     "float32", "-o", str(tmp_path / "f")]) == 2
    assert "--input-dtype is for onnx" in capsys.readouterr().err and not (tmp_path / "f").exists()

    # Through the service: the same checkpoint, the same card (test metrics are the storage's only).
    monkeypatch.setenv("SWEEPCTL_TOKEN", "export-token-" + "5" * 20)
    monkeypatch.setenv("HOME", str(tmp_path))
    app = create_app(StorageBackend(str(runs)), token="export-token-" + "5" * 20, tokens_file="")
    with serve(app) as url:
        assert sweepctl(["export", "digits-cnn", "--server", url, "--format", "torchscript", "-o", str(tmp_path / "via")]) == 0
    served = json.loads((tmp_path / "via" / "model_card.json").read_text())
    direct = json.loads((tmp_path / "torchscript" / "model_card.json").read_text())
    assert served["checkpoint_files"] == direct["checkpoint_files"] and served["test_metrics"] is None
    assert {k: v for k, v in served.items() if k not in ("test_metrics", "export", "files")} == \
        {k: v for k, v in direct.items() if k not in ("test_metrics", "export", "files")}

