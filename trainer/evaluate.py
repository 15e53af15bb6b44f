"""Test-set evaluation of a trial's checkpoint: the numbers behind the report's test section.

    sweepctl evaluate NAME [--trial ID]   →  <report dir>/evaluation.json + PNGs, report regenerated

The test split is the dataset's official one (digits: a fixed hold-out), normalized with the
train split's statistics exactly as in training, and never seen during the sweep.

Penultimate-layer features are captured generically: every model family ends in an ``nn.Linear``
classifier (the last layer of the mlp/cnn ``nn.Sequential``, ``.fc`` of torchvision's ResNets), so a
forward pre-hook on that layer records its input. No model code knows about evaluation.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.analysis import figures, report
from service.core import checkpoint as checkpoint_format
from service.core import storage
from service.core.record import SweepStore

TSNE_SEED = 0  # t-SNE and its subsample are fixed: the same checkpoint draws the same map


@dataclass
class EvalResults:
    """Predictions of one model on the test split (numpy, on CPU)."""

    labels: np.ndarray  # int64 (N,)
    probs: np.ndarray  # float32 (N, classes): softmax of the logits
    features: np.ndarray  # float32 (N, D): the classifier's input
    loss: float  # mean cross-entropy
    class_names: list[str]

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(1)

    @property
    def accuracy(self) -> float:
        return float((self.preds == self.labels).mean())


# ----------------------------------------------------------------------------- model → predictions
def classifier_layer(model: nn.Module, num_classes: int) -> nn.Linear:
    """The final classifier: the last registered ``nn.Linear`` producing ``num_classes`` outputs."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear with {num_classes} outputs to take features from")
    return linears[-1]


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, num_classes: int, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """(logits, penultimate features) for every image of ``x``, in fp32, model in eval mode."""
    model.eval()
    captured: list[Tensor] = []
    hook = classifier_layer(model, num_classes).register_forward_pre_hook(
        lambda _module, inputs: captured.append(inputs[0].detach().flatten(1).float())
    )
    try:
        logits = [model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)]
    finally:
        hook.remove()
    if len(captured) != len(logits):  # the hook must fire exactly once per forward
        raise RuntimeError(f"classifier ran {len(captured)} times for {len(logits)} batches")
    return torch.cat(logits), torch.cat(captured)


def evaluate_model(model: nn.Module, test_x: Tensor, test_y: Tensor, class_names: list[str]) -> EvalResults:
    logits, features = predict(model, test_x, len(class_names))
    return EvalResults(
        labels=test_y.numpy().astype(np.int64),
        probs=logits.softmax(1).numpy(),
        features=features.numpy(),
        loss=float(F.cross_entropy(logits, test_y)),
        class_names=list(class_names),
    )


# ----------------------------------------------------------------------------- analyses (pure numpy)
def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Diagonal / row sums; NaN for a class with no test image."""
    totals = cm.sum(1)
    return np.divide(np.diag(cm), totals, out=np.full(len(cm), np.nan), where=totals > 0)


def most_confused(cm: np.ndarray, k: int = 5) -> list[dict]:
    """The k largest off-diagonal cells: true class ``true`` predicted as ``pred``, most often first
    (ties: lower true, then lower pred). ``fraction``: share of the true class's test images."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    cells = [(int(off[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if off[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": i, "pred": j, "count": n, "fraction": n / int(cm[i].sum())} for n, i, j in cells[:k]]


def worst_k(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k images with the lowest probability of their true class, lowest first
    (ties broken by index)."""
    p_true = probs[np.arange(len(labels)), labels]
    return np.argsort(p_true, kind="stable")[:k]


def tsne_map(features: np.ndarray, max_points: int = 1000, seed: int = TSNE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the subsample, its 2-D t-SNE embedding). Subsampled to ``max_points`` because
    t-SNE is quadratic-ish in the number of points; a fixed seed for the sample and the layout."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    rng = np.random.default_rng(seed)
    n = len(features)
    idx = np.sort(rng.choice(n, size=min(n, max_points), replace=False))
    if len(idx) < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {len(idx)}")
    perplexity = min(30.0, (len(idx) - 1) / 3)  # sklearn requires perplexity < n_samples
    # One OpenMP thread: Barnes-Hut t-SNE's parallel loop busy-waits, and on shared cores (a
    # 2-CPU machine with Ray trials running) 2 threads took 41 s for 360 points against 1.1 s.
    with threadpool_limits(1):
        embedding = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            features[idx].astype(np.float64)
        )
    return idx, embedding


def display_images(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Undo the dataset normalization for viewing: (N, C, H, W) in [0, 1]. Raw digits and CIFAR
    are already in [0, 1]; anything outside (synthetic data) is min-max scaled per image."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    img = (x * s + m).numpy()
    out = []
    for im in img:
        if im.min() < 0 or im.max() > 1:
            im = (im - im.min()) / max(float(im.max() - im.min()), 1e-12)
        out.append(im)
    return np.stack(out) if out else np.zeros((0, *x.shape[1:]))


# ----------------------------------------------------------------------------- the verb
def checkpoint_dir(uri: str) -> tuple[Path, bool]:
    """A local directory holding the checkpoint recorded for the trial, verified against its
    manifest (service/core/checkpoint.py): the path itself for local storage, a fresh download for
    s3://. Returns (directory, whether it is a temporary copy to delete after loading)."""
    temporary = storage.is_s3(uri)
    if temporary:
        local = Path(tempfile.mkdtemp(prefix="sweep-checkpoint-"))
        storage.download_dir(uri, local)
    else:
        local = Path(uri)
    try:
        if not (local / checkpoint_format.STATE).exists() and not (local / checkpoint_format.MANIFEST).exists():
            raise report.ReportError(f"checkpoint {uri} is missing (no {checkpoint_format.STATE}); "
                                     f"retention may have deleted it")
        try:
            checkpoint_format.verify(local, source=uri)
        except checkpoint_format.CheckpointError as err:
            raise report.ReportError(str(err)) from None
    except BaseException:
        if temporary:
            shutil.rmtree(local, ignore_errors=True)
        raise
    return local, temporary


def evaluate_trial(
    storage_uri: str,
    name: str,
    trial_id: str | None = None,
    out_dir: str | Path | None = None,
    *,
    worst: int = 10,
    confused: int = 10,
    tsne_points: int = 1000,
    **report_options,
) -> Path:
    """Evaluate a trial's checkpoint (default: the best trial's) on the test split, write
    evaluation.json and its figures into the report directory, then regenerate the report
    (``report_options``: see report.generate_report; unset ones keep the existing report's)."""
    from trainer.checkpoint import load_model
    from trainer.data import load_dataset

    index = report.read_index(SweepStore(storage_uri, name))
    trial = index.trial(trial_id) if trial_id else index.best
    if trial is None:
        raise report.ReportError(
            f"no trial {trial_id!r} in sweep '{name}'" if trial_id else f"sweep '{name}' has no scored trial yet"
        )
    if not trial.checkpoint:
        raise report.ReportError(f"trial {trial.trial_id} has no checkpoint")
    ckpt, temporary = checkpoint_dir(trial.checkpoint)
    out = Path(out_dir) if out_dir else report.default_report_dir(storage_uri, name)

    try:
        model, spec = load_model(ckpt)
    finally:
        if temporary:
            shutil.rmtree(ckpt, ignore_errors=True)
    data = load_dataset(spec.data, spec.seed)  # same seed → same train statistics as in training
    results = evaluate_model(model, data.test_x, data.test_y, data.class_names)

    num_classes = len(results.class_names)
    cm = confusion_matrix(results.labels, results.preds, num_classes)
    accuracy = per_class_accuracy(cm)
    worst_idx = worst_k(results.probs, results.labels, worst)
    worst_rows = [
        {"index": int(i), "true": int(results.labels[i]), "pred": int(results.preds[i]),
         "prob_true": float(results.probs[i, results.labels[i]]), "prob_pred": float(results.probs[i].max())}
        for i in worst_idx
    ]
    tsne_idx, embedding = tsne_map(results.features, tsne_points)

    pngs = {
        "confusion_matrix.png": figures.fig_confusion(cm, results.class_names),
        "per_class_accuracy.png": figures.fig_per_class(np.nan_to_num(accuracy), results.class_names),
        "worst_images.png": figures.fig_worst_images(
            display_images(data.test_x[torch.as_tensor(worst_idx)], data.mean, data.std), worst_rows, results.class_names
        ),
        "tsne.png": figures.fig_tsne(
            embedding, results.labels[tsne_idx], results.preds[tsne_idx] != results.labels[tsne_idx], results.class_names
        ),
    }
    for png, data_bytes in pngs.items():
        report.write_file(out / png, data_bytes)
    report.write_json(out / report.EVALUATION_JSON, {
        "sweep": name,
        "trial_id": trial.trial_id,
        "checkpoint": trial.checkpoint,
        "config": trial.config,
        "test_size": len(results.labels),
        "test_accuracy": results.accuracy,
        "test_loss": results.loss,
        "class_names": results.class_names,
        "class_counts": cm.sum(1).tolist(),
        "confusion_matrix": cm.tolist(),
        "per_class_accuracy": [None if np.isnan(a) else float(a) for a in accuracy],
        "most_confused": most_confused(cm, confused),
        "worst": worst_rows,
        "tsne": {"points": len(tsne_idx), "random_state": TSNE_SEED, "indices": tsne_idx.tolist(),
                 "embedding": np.round(embedding, 4).tolist()},
        "figures": sorted(pngs),
    })
    return report.generate_report(storage_uri, name, out, reuse_options=True, publish=out_dir is None, **report_options)
