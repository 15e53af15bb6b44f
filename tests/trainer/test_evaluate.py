"""trainer.evaluate without Ray: feature capture on every model family, and the test-set analyses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.core.spec import CIFAR10NetSpec, CNNSpec, data_spec, MLPSpec, ResNetSpec, SmallResNetSpec
from trainer import evaluate
from trainer.data import load_dataset
from trainer.models import build_model

FAMILIES = [
    MLPSpec(name="mlp", hidden_sizes=[32, 16], batchnorm=True, dropout=0.2),
    CNNSpec(name="cnn", filters=8, hidden_size=16, dropout=0.3),
    CIFAR10NetSpec(name="cifar10net", conv_channels=[8, 16], fc1=32, fc2=16),
    SmallResNetSpec(name="small_resnet", h_1=8, h_2=16),
    ResNetSpec(name="resnet", depth=18, cifar_stem=True),
    ResNetSpec(name="resnet", depth=18, head="mlp", head_widths=[32]),
]


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (3, 16, 16)], ids=["1x8x8", "3x16x16"])
@pytest.mark.parametrize("spec", FAMILIES, ids=lambda s: f"{s.name}-{getattr(s, 'head', '')}")
def test_penultimate_features_are_the_classifiers_input_for_every_family(spec, input_shape):
    torch.manual_seed(0)
    model = build_model(spec, input_shape, num_classes=7).eval()
    x = torch.randn(10, *input_shape)
    logits, features = evaluate.predict(model, x, num_classes=7, batch_size=4)  # 3 batches
    classifier = evaluate.classifier_layer(model, 7)
    assert features.shape == (10, classifier.in_features)
    with torch.no_grad():
        assert torch.allclose(classifier(features), logits, atol=1e-5)
        assert torch.allclose(model(x), logits, atol=1e-5)
    assert not classifier._forward_pre_hooks  # the hook is gone afterwards


@pytest.fixture(scope="module")
def digits_results():
    """A small CNN trained for a few steps on digits, evaluated on the digits test split."""
    data = load_dataset(data_spec(name="digits", val_fraction=0.2), seed=0)
    torch.manual_seed(0)
    model = build_model(CNNSpec(name="cnn", filters=8, num_fc_layers=1), data.input_shape, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(30):  # weak on purpose: there must be mistakes to analyse
        batch = torch.arange(step * 32, step * 32 + 32) % len(data.train_y)
        optimizer.zero_grad()
        F.cross_entropy(model(data.train_x[batch]), data.train_y[batch]).backward()
        optimizer.step()
    model.eval()
    return model, data, evaluate.evaluate_model(model, data.test_x, data.test_y, data.class_names)


def test_confusion_matrix_sums_to_test_size_and_its_diagonal_is_the_accuracy(digits_results):
    model, data, results = digits_results
    cm = evaluate.confusion_matrix(results.labels, results.preds, len(data.class_names))
    assert cm.sum() == len(data.test_y)
    assert np.trace(cm) / cm.sum() == pytest.approx(results.accuracy)
    with torch.no_grad():
        logits = model(data.test_x)
    assert results.accuracy == pytest.approx((logits.argmax(1) == data.test_y).float().mean().item())
    assert results.loss == pytest.approx(F.cross_entropy(logits, data.test_y).item(), rel=1e-5)
    assert 0.2 < results.accuracy < 1.0  # learned something, still makes mistakes
    np.testing.assert_array_equal(cm.sum(1), np.bincount(results.labels, minlength=10))
    per_class = evaluate.per_class_accuracy(cm)
    for c in range(10):
        mask = results.labels == c
        assert per_class[c] == pytest.approx((results.preds[mask] == c).mean())


def test_worst_k_are_exactly_the_k_lowest_true_class_probabilities(digits_results):
    _, _, results = digits_results
    worst = evaluate.worst_k(results.probs, results.labels, 10)
    p_true = np.array([results.probs[i, y] for i, y in enumerate(results.labels)])
    assert len(worst) == 10
    assert sorted(p_true[worst].tolist()) == p_true[worst].tolist()  # lowest first
    assert p_true[worst].max() <= np.delete(p_true, worst).min()  # nothing outside is lower
    # ties are broken by index, deterministically
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    assert evaluate.worst_k(probs, np.array([0, 0, 1, 0]), 3).tolist() == [3, 0, 2]


def test_most_confused_pairs_largest_off_diagonal_first():
    cm = np.array([[5, 3, 0], [1, 7, 4], [0, 4, 2]])
    assert evaluate.most_confused(cm, 3) == [
        {"true": 1, "pred": 2, "count": 4, "fraction": 4 / 12},
        {"true": 2, "pred": 1, "count": 4, "fraction": 4 / 6},
        {"true": 0, "pred": 1, "count": 3, "fraction": 3 / 8},
    ]
    assert evaluate.most_confused(np.eye(3, dtype=int) * 5) == []


def test_tsne_is_seeded_and_subsampled(digits_results):
    _, _, results = digits_results
    idx, embedding = evaluate.tsne_map(results.features, max_points=120)
    idx2, embedding2 = evaluate.tsne_map(results.features, max_points=120)
    assert len(idx) == 120 == len(set(idx.tolist())) and embedding.shape == (120, 2)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_allclose(embedding, embedding2)


def test_display_images_undo_normalization(digits_results):
    _, data, _ = digits_results
    images = evaluate.display_images(data.test_x[:5], data.mean, data.std)
    assert images.shape == (5, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    # digits pixels are in [0, 1] before normalization: shown as they were, not rescaled
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    np.testing.assert_allclose(images, (data.test_x[:5] * std + mean).numpy(), atol=1e-6)
    assert images.max() > 0.9 and images.min() < 0.1


def test_the_checkpoint_is_verified_against_its_manifest_before_loading(tmp_path, monkeypatch):
    from service.analysis.report import ReportError
    from service.core import checkpoint as checkpoint_format

    ckpt = tmp_path / "checkpoint_000002"
    ckpt.mkdir()
    (ckpt / checkpoint_format.STATE).write_bytes(b"weights")
    (ckpt / checkpoint_format.SPEC).write_text("{}")
    checkpoint_format.write_manifest(ckpt, 2, {"val_acc": 0.9})
    assert evaluate.checkpoint_dir(str(ckpt)) == (ckpt, False)

    with pytest.raises(ReportError, match="is missing .*retention"):
        evaluate.checkpoint_dir(str(tmp_path / "checkpoint_000001"))
    (ckpt / checkpoint_format.STATE).write_bytes(b"tampered")
    with pytest.raises(ReportError, match=f"checksum mismatch for {checkpoint_format.STATE}"):
        evaluate.checkpoint_dir(str(ckpt))

    # s3://: a temporary copy, removed when it does not verify
    copies = []

    def download(uri, target):
        copies.append(target)
        for f in ckpt.iterdir():
            (target / f.name).write_bytes(f.read_bytes())

    monkeypatch.setattr(evaluate.storage, "download_dir", download)
    with pytest.raises(ReportError, match="s3://bucket/sweep/t1/checkpoint_000002"):
        evaluate.checkpoint_dir("s3://bucket/sweep/t1/checkpoint_000002")
    assert copies and not copies[0].exists()
