"""Earlier sweeps in storage for warm-start tests: spec.yaml, trial records and the index, as a
driver leaves them (service/core/warm_start.py reads them)."""

from __future__ import annotations

import copy

import yaml

from conftest import BASE_SPEC, deep_update
from service.core import storage
from service.core.record import EpochResult, Objective, RecordWriter, SweepStore, new_index
from service.core.spec import PRIMITIVES, SweepSpec

SPACE = {"model": {"name": "mlp", "hidden_sizes": {"choice": [[16], [32]]}},
         "train": {"epochs": 2, "optimizer": {"lr": {"loguniform": [1e-4, 1e-2]}}},
         "search": {"algorithm": "optuna", "num_samples": 3}}


def spec_data(tmp_path, name: str, **changes) -> dict:
    """BASE_SPEC with SPACE, then ``changes`` (a primitive or a value replaces what was there)."""
    data = deep_update(BASE_SPEC, {"name": name, "storage": {"uri": str(tmp_path / "runs")}})
    data["model"] = {}
    return _merged(data, _merged(copy.deepcopy(SPACE), changes))


def _merged(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not (set(value) & set(PRIMITIVES)) \
                and not (set(out[key]) & set(PRIMITIVES)):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def earlier_sweep(tmp_path, name: str, trials: list[tuple[str, dict, list[float] | None]], **changes) -> SweepSpec:
    """A finished sweep in storage, as a driver leaves it: spec.yaml, trial records, the index.
    ``trials``: (status, config, val_acc per epoch)."""
    spec = SweepSpec.model_validate(spec_data(tmp_path, name, **changes))
    store = SweepStore(spec.storage.uri, name)
    storage.write_text_atomic(store.spec_uri, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    writer = RecordWriter(store, new_index(name, Objective(metric="val_acc", mode="max"), max_epochs=2,
                                           num_trials=len(trials), attempt=1))
    for k, (status, trial_config, accuracies) in enumerate(trials):
        record = writer.trial(f"abcde_{k:05d}", trial_config)
        for epoch, acc in enumerate(accuracies or [], start=1):
            writer.add_result(record, EpochResult(epoch=epoch, val_acc=acc, val_loss=1 - acc, params=1000 + k))
        writer.set_status(record, status)
        writer.changed(record)
    writer.write_index("finished", 1.0)
    return spec


def config(hidden: list[int], lr: float) -> dict:
    return {"model.hidden_sizes": hidden, "train.optimizer.lr": lr}
