"""Real sweeps on real local Ray, tiny real data (scikit-learn digits / synthetic)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from service.core import storage
from service.core.record import EpochResult, SweepIndex, SweepStore, TrialRecord
from service.core.spec import SweepSpec, num_trials
from trainer import load_model
from trainer.data import augment_batch, load_dataset
from trainer.loop import evaluate
from trainer.driver.sweep import run_sweep

pytestmark = pytest.mark.slow
# Timings vary run to run; checkpoint size varies with the sweep name stored inside it.
TIMING_KEYS = {"samples_per_second", "epoch_seconds", "train_seconds", "inference_ms", "checkpoint_seconds",
               "checkpoint_bytes"}


def quiet(_line: str) -> None:
    pass


def metrics_only(history: list[EpochResult]) -> list[dict]:
    return [h.model_dump(exclude=TIMING_KEYS | {"resumed_from_epoch"}) for h in history]


def records(spec: SweepSpec, index: SweepIndex) -> list[TrialRecord]:
    """Every trial's full record (history included), in the index's order."""
    return SweepStore(spec.storage.uri, index.sweep).read_trials(index)


def test_grid_sweep_runs_every_trial_and_stores_its_record_spec_and_checkpoints(ray_local, make_spec):
    spec = make_spec(
        name="grid", model={"filters": {"grid": [4, 8]}}, train={"optimizer": {"lr": {"grid": [1e-3, 3e-3]}}}
    )
    index = run_sweep(spec, echo=quiet)

    store = SweepStore(spec.storage.uri, "grid")
    assert store.read_index() == index
    assert storage.exists(store.spec_uri)
    assert len(index.trials) == num_trials(spec) == 4
    assert index.status == "finished" and index.trial_states == {"terminated": 4}
    configs = {(t.config["model.filters"], t.config["train.optimizer.lr"]) for t in index.trials}
    assert configs == {(4, 1e-3), (4, 3e-3), (8, 1e-3), (8, 3e-3)}
    trials = store.read_trials(index)
    assert [t.summary() for t in trials] == index.trials  # each trial.json agrees with its index line
    for trial in trials:
        assert [h.epoch for h in trial.history] == [1, 2]
        assert Path(trial.checkpoint, "state.pt").exists()
    best = max(index.trials, key=lambda t: t.best.val_acc)
    assert index.best_trial == best.trial_id
    assert index.best.best.val_acc == best.best.val_acc


def test_every_trial_validates_on_the_same_split_disjoint_from_train(ray_local, make_spec):
    spec = make_spec(name="split", model={"filters": {"grid": [4, 8]}}, train={"epochs": 1})
    index = run_sweep(spec, echo=quiet)
    fingerprints = {t.val_split for t in records(spec, index)}
    assert len(fingerprints) == 1

    data = load_dataset(spec.data, spec.seed)
    from trainer.loop import _fingerprint

    assert fingerprints == {_fingerprint(data.val_indices)}
    assert set(data.val_indices.tolist()).isdisjoint(data.train_indices.tolist())
    other_seed = load_dataset(spec.data, spec.seed + 1)
    assert _fingerprint(other_seed.val_indices) not in fingerprints


@pytest.mark.parametrize("scheduler", ["asha", "hyperband"])
def test_early_stopping_schedulers_stop_weaker_trials(ray_local, make_spec, scheduler):
    # Learning rates from good to hopeless; one trial at a time so later weak trials meet a full rung.
    # HyperBand (synchronous) fills its no-early-stop bracket first and compares whole brackets:
    # give it enough trials to reach the others and let them run side by side.
    spec = make_spec(
        name=f"stop-{scheduler}",
        train={"epochs": 4, "optimizer": {"lr": {"grid": [3e-3, 1e-3, 1e-5, 3e-6, 1e-6, 5e-7]}}},
        search={"num_samples": 2 if scheduler == "hyperband" else 1},
        scheduler={"name": scheduler, "grace_period": 1, "reduction_factor": 2},
        resources={"max_concurrent_trials": 1 if scheduler == "asha" else None},
    )
    index = run_sweep(spec, echo=quiet)
    stopped = [t for t in index.trials if t.status == "stopped_early"]
    assert stopped, index.trial_states
    assert all(t.epochs < spec.train.epochs for t in stopped)
    assert index.best.epochs == spec.train.epochs
    assert sum(t.epochs for t in index.trials) < num_trials(spec) * spec.train.epochs


def test_two_worker_ddp_trial_trains_on_disjoint_shards(ray_local, make_spec):
    spec = make_spec(name="ddp", resources={"workers_per_trial": 2, "cpus_per_worker": 1})
    index = run_sweep(spec, echo=quiet)
    (trial,) = records(spec, index)
    assert trial.status == "terminated", trial.stop_reason
    train_size = len(load_dataset(spec.data, spec.seed).train_y)
    for epoch in trial.history:
        assert epoch.duplicate_samples == 0  # no sample trained by both ranks
        assert epoch.train_samples == 2 * (train_size // 2)  # both ranks trained a full half
    assert trial.best.val_acc > 0.5
    assert trial.checkpoint and Path(trial.checkpoint, "state.pt").exists()


def test_same_spec_and_seed_twice_gives_identical_results(ray_local, make_spec):
    changes = {"model": {"dropout": 0.25, "filters": {"grid": [4, 8]}}, "data": {"augment": [{"name": "hflip"}]}}
    specs = [make_spec(name="repeat-a", **changes), make_spec(name="repeat-b", **changes)]
    first, second = (records(spec, run_sweep(spec, echo=quiet)) for spec in specs)
    by_config = lambda trials: {str(t.config): metrics_only(t.history) for t in trials}  # noqa: E731
    assert by_config(first) == by_config(second)


def test_augmentation_touches_training_batches_only(ray_local, make_spec):
    # Flip every training image: the reported val metrics must equal the checkpoint's metrics on
    # the untouched validation images, not on flipped ones.
    spec = make_spec(
        name="augment",
        data={"augment": [{"name": "hflip", "p": 1.0}, {"name": "random_crop", "padding": 1}]},
        checkpoint={"keep": None},
    )
    index = run_sweep(spec, echo=quiet)
    (trial,) = records(spec, index)
    model, trial_spec = load_model(trial.checkpoint)
    epoch = torch.load(Path(trial.checkpoint, "state.pt"), weights_only=True)["epoch"]
    reported = next(h for h in trial.history if h.epoch == epoch)

    data = load_dataset(trial_spec.data, trial_spec.seed)
    val_loss, val_acc = evaluate(model, data.val_x, data.val_y, None)
    assert val_loss == pytest.approx(reported.val_loss, rel=1e-5)
    assert val_acc == pytest.approx(reported.val_acc)
    flipped = augment_batch(data.val_x, trial_spec.data.augment[:1], torch.Generator())
    assert evaluate(model, flipped, data.val_y, None)[0] != pytest.approx(reported.val_loss, rel=1e-3)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_paths_train_correctly_on_cpu(ray_local, make_spec, amp):
    reference_spec = make_spec(name=f"amp-off-{amp}", train={"epochs": 3})
    mixed_spec = make_spec(name=f"amp-{amp}", train={"epochs": 3, "amp": amp})
    reference, mixed = run_sweep(reference_spec, echo=quiet), run_sweep(mixed_spec, echo=quiet)
    ref_acc = reference.best.best.val_acc
    amp_acc = mixed.best.best.val_acc
    assert amp_acc > 0.8
    assert abs(amp_acc - ref_acc) < 0.1
    # Really a different arithmetic, not fp32 under another name:
    (ref_trial,), (mixed_trial,) = records(reference_spec, reference), records(mixed_spec, mixed)
    assert mixed_trial.history[0].train_loss != ref_trial.history[0].train_loss


def test_a_killed_trial_resumes_from_its_checkpoint_with_identical_results(ray_local, make_spec):
    changes = {
        # ~0.3 s epochs: slow enough to be killed between two of them
        "data": {"name": "synthetic", "num_samples": 3000, "image_size": 16},
        "model": {"filters": 32, "dropout": 0.1, "num_fc_layers": 2},
        "train": {"epochs": 6},
        "checkpoint": {"keep": None},
    }
    no_crash = make_spec(name="no-crash", **changes)
    uninterrupted = run_sweep(no_crash, echo=quiet)

    spec = make_spec(name="crash", **changes)
    killed_pids: list[int] = []
    killer = threading.Thread(
        target=_kill_trial_after_checkpoint, args=(Path(spec.storage.uri) / "crash", 2, killed_pids)
    )
    killer.start()
    crashed = run_sweep(spec, echo=quiet)
    killer.join()
    assert killed_pids, "the trial finished before it could be killed"

    (before,), (after,) = records(no_crash, uninterrupted), records(spec, crashed)
    assert after.restarts == 1
    assert after.status == "terminated"
    assert [h.epoch for h in after.history] == list(range(1, 7))  # every epoch counted once
    # Continued from a checkpoint (epoch 1 or 2, depending on whether Tune had registered the
    # newest one when the process died), not from scratch:
    assert after.history[-1].resumed_from_epoch >= 1
    assert metrics_only(after.history) == metrics_only(before.history)


def _kill_trial_after_checkpoint(sweep_dir: Path, epoch: int, killed: list[int], timeout_s: float = 120) -> None:
    """SIGKILL the trial's worker process as soon as the checkpoint of ``epoch`` is in storage.
    Ray titles a function trainable's actor process ``ray::ImplicitFunc...``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if list(sweep_dir.glob(f"*/checkpoint_{epoch - 1:06d}")):
            for proc in Path("/proc").iterdir():
                try:
                    title = (proc / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if proc.name.isdigit() and title.startswith("ray::ImplicitFunc"):
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.append(int(proc.name))
            return
        time.sleep(0.01)


def test_a_trial_that_can_never_fit_the_cluster_is_refused_before_anything_starts(ray_local, make_spec):
    from service.core.errors import UserError

    spec = make_spec(name="too-big", resources={"cpus_per_worker": 1, "gpus_per_worker": 1})
    with pytest.raises(UserError, match=r"needs 1 CPU, 1 GPU .* has 2 CPU, 0 GPU"):
        run_sweep(spec, echo=quiet)
    assert not (Path(spec.storage.uri) / "too-big").exists()
