"""What the loop reports beside its scores (params, train_seconds, inference_ms), and the constraint
check before training, without Ray: the trainer's own ``fit`` on tiny digits models, and models
counted on the meta device against the same models built for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import BASE_SPEC, deep_update
from service.core.errors import TrialRejected
from service.core.record import EpochResult
from service.core.spec import (
    DATA_SPEC, CIFAR10NetSpec, CNNSpec, MLPSpec, ResNetSpec, SmallResNetSpec, SweepSpec,
)
from trainer.data import load_dataset
from trainer.data.formats import dataset_shape
from trainer.loop import fit, reject_if_infeasible
from trainer.models import build_model, count_trainable, trainable_parameters
from tune_session import Session


def _spec(root: Path, **changes) -> SweepSpec:
    base = {k: v for k, v in BASE_SPEC.items() if k != "model"}  # the model: replaced, not merged
    return SweepSpec.model_validate(deep_update(base, {"name": "obj", "storage": {"uri": str(root)}, **changes}))


def test_every_epoch_reports_the_trainable_parameters_the_training_seconds_and_the_inference_latency(tmp_path):
    spec = _spec(tmp_path, model={"name": "mlp", "hidden_sizes": [16]}, train={"epochs": 2})
    trial_dir = tmp_path / "obj" / "t_own"
    trial_dir.mkdir(parents=True)
    session = Session(trial_dir)
    fit(spec, session)
    first, second = (EpochResult.model_validate(r) for r in session.reports)  # the record's own reading

    data = load_dataset(spec.data, spec.seed)
    model = build_model(spec.model, data.input_shape, data.num_classes)
    assert first.params == second.params == count_trainable(model) == 64 * 16 + 16 + 16 * 10 + 10  # parameters
    # seconds of the training phase, summed: below the epoch's wall time (which adds validation)
    assert 0 < first.train_seconds < first.epoch_seconds
    assert first.train_seconds < second.train_seconds < first.epoch_seconds + second.epoch_seconds
    # milliseconds per image, measured once after the first epoch and carried (the architecture's, not the weights')
    assert second.inference_ms == first.inference_ms and 0 < first.inference_ms < 1000

    # a restore continues the count from its checkpoint (epoch 1's), then measures its own latency
    resumed = Session(tmp_path / "obj" / "t_resumed", start_from=trial_dir / "checkpoint_000000")
    resumed.trial_dir.mkdir()
    fit(spec, resumed)
    (again,) = (EpochResult.model_validate(r) for r in resumed.reports)
    assert again.epoch == 2 and again.resumed_from_epoch == 1
    assert first.train_seconds < again.train_seconds < first.train_seconds + again.epoch_seconds
    assert again.inference_ms > 0


@pytest.mark.parametrize("model, shape, classes", [
    (MLPSpec(name="mlp", width_schedule="halve"), (1, 8, 8), 10),
    (CNNSpec(name="cnn", num_conv_layers=2, padding="valid", kernel_size=2, batchnorm=True), (1, 8, 8), 10),
    (CIFAR10NetSpec(name="cifar10net"), (3, 32, 32), 10),
    (SmallResNetSpec(name="small_resnet"), (3, 32, 32), 100),
    (ResNetSpec(name="resnet", depth=18, cifar_stem=True), (1, 28, 28), 10),
    # frozen: the head alone trains; weights_uri is never fetched for a count (the file does not exist)
    (ResNetSpec(name="resnet", depth=18, mode="frozen", weights_uri="/nonexistent/resnet18.pt"), (3, 32, 32), 10),
])
def test_the_count_on_the_meta_device_is_the_built_models(model, shape, classes):
    real = count_trainable(build_model(model, shape, classes, transfer_weights=False))
    assert trainable_parameters(model, shape, classes) == real
    if getattr(model, "mode", None) == "frozen":
        assert real == 512 * classes + classes  # the linear head


@pytest.mark.parametrize("data", [{"name": "digits"}, {"name": "synthetic", "channels": 2, "image_size": 12, "num_classes": 3}])
def test_the_dataset_shape_without_reading_it_is_what_loading_it_gives(data):
    loaded = load_dataset(DATA_SPEC.validate_python(data), 0)
    assert dataset_shape(DATA_SPEC.validate_python(data)) == (tuple(loaded.input_shape), loaded.num_classes)


def test_a_params_constraint_rejects_an_oversized_config_before_any_data_is_read(tmp_path):
    # CIFAR-10 at a path that does not exist: reading it would fail; the check never reads it
    data = {"name": "cifar10", "path": str(tmp_path / "no-such-cifar")}
    big = _spec(tmp_path, data=data, model={"name": "cifar10net"}, constraints=["params <= 2e5", "val_acc >= 0.5"])
    with pytest.raises(TrialRejected) as err:
        reject_if_infeasible(big)
    assert err.value.message == "params = 1,103,274 breaks 'params <= 2e5'"  # val_acc: judged on results, later
    small = _spec(tmp_path, data=data, model={"name": "cifar10net", "fc1": 16, "fc2": 16, "conv_channels": [8, 8]},
                  constraints=["params <= 2e5"])
    reject_if_infeasible(small)  # within the bound: nothing raised, nothing read
    reject_if_infeasible(_spec(tmp_path, data=data, model={"name": "cifar10net"}))  # no constraint
