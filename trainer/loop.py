"""THE training loop. One function, ``fit``, read top to bottom; the two Ray entry points below it
only decide where it runs:

- ``tune_trial``: a Tune function trainable. 1 worker: ``fit`` runs right here in the trial
  (cheap, actors are reused across trials). N workers: the trial starts a Ray Train TorchTrainer
  whose workers run the same ``fit`` under DDP (gloo on CPU, nccl on GPU).

Randomness is derived from (seed, epoch, rank) at the start of every epoch, so resuming from the
checkpoint of epoch k replays epochs k+1.. exactly as an uninterrupted run would: the checkpoint
needs only the model, optimizer, lr schedule, scaler and epoch.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import math
import os
import re
import statistics
import tempfile
import time
import warnings
from pathlib import Path, PurePosixPath
from typing import Callable, NamedTuple

import pyarrow.fs
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ray.train.v2.api.callback import UserCallback

from service.core import checkpoint as checkpoint_format
from service.core import storage
from service.core.errors import TrialRejected
from service.core.record import SweepStore
from service.core.spec import SweepSpec, concrete, parse_constraint
from trainer import gpu_memory
from trainer.data import SplitData, augment_batch, epoch_batches, load_dataset
from trainer.data.formats import dataset_shape
from trainer.models import build_model, count_trainable, preferred_memory_format, trainable_parameters
from trainer.tensorboard import trial_board



def fit(spec: SweepSpec, session, hparams: dict | None = None) -> None:
    """Train ``spec`` (concrete: no search primitives) and report once per epoch through
    ``session``: ``ray.tune`` in a 1-worker trial, ``_TrainSession`` on DDP workers (both offer
    report(), get_checkpoint() and Checkpoint). ``hparams``: the trial's searched values by dotted
    path (Tune's trial config): rank 0 then writes the trial's TensorBoard run
    (trainer/tensorboard.py); None writes none (callers outside a sweep: bench, tests)."""
    rank, world_size = _rank_and_world()
    device = _device(spec)
    # A trial with a fractional GPU caps its CUDA memory at its share, and counts its peak from here
    # (trainer/gpu_memory.py); over the cap it fails with both named, not the trials beside it.
    gpu_cap = gpu_memory.apply_cap(spec.resources.gpus_per_worker, device)
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    _reuse_freed_memory()

    data = _dataset(spec.data.model_dump_json(exclude={"augment"}), spec.seed)  # augmentation: per batch
    # Images stay on the device in the dataset's own dtype (uint8 for CIFAR/MNIST: a quarter of
    # float32's bytes) and are normalized per batch, bit for bit as a normalized float32 copy would be.
    normalize = data.normalizer(device)
    train_x, train_y = data.train_images.to(device), data.train_y.to(device)
    val_x, val_y = data.val_images.to(device), data.val_y.to(device)
    val_split = _fingerprint(data.val_indices)  # reported: the same for every trial of a sweep

    torch.manual_seed(spec.seed)  # same init on every rank and for every trial of this seed
    model = build_model(spec.model, data.input_shape, data.num_classes)
    # Convolutions run fastest channels-last (NHWC) on CPU (oneDNN) and GPU (tensor cores); the
    # shapes, the state_dict and the numbers' meaning stay NCHW. Batches are converted as drawn.
    memory_format = preferred_memory_format(model)
    model = model.to(device, memory_format=memory_format)
    # Frozen transfer learning trains only the head: the optimizer never sees frozen weights.
    optimizer = _optimizer(spec, [p for p in model.parameters() if p.requires_grad])
    amp_dtype = autocast_dtype(spec.train.amp, device)
    # fp16 needs loss scaling to keep small gradients from underflowing; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    steps_per_epoch = math.ceil((len(train_y) // world_size) / spec.train.batch_size)
    params = count_trainable(model)  # reported every epoch (the record's ``params``)
    if rank == 0:  # the trial's log (sweepctl logs NAME --trial ID) starts with what is being trained
        total = sum(p.numel() for p in model.parameters())
        print(f"training {spec.model.name} ({total:,} parameters, {params:,} trainable) on {device} ({amp_dtype or 'fp32'}), "
              f"{world_size} worker(s); {len(train_y):,} training / {len(val_y):,} validation samples, "
              f"{spec.train.epochs} epochs; images held as {data.train_images.dtype} ({data.resident_bytes:,} bytes)"
              + (f"; GPU memory capped at {gpu_cap.describe()}" if gpu_cap else ""), flush=True)

    # Resume: after a crash (our own checkpoint) or a PBT exploit (the donor trial's checkpoint).
    # A corrupt one (not matching its sha256 manifest, or not loading) is passed over for the
    # trial's previous intact one, else a fresh start; one of another shape raises (a config error).
    first_epoch, restored = 1, {}
    train_seconds = 0.0  # the training phase's seconds, summed over epochs (a restore continues its checkpoint's)
    checkpoint = session.get_checkpoint()
    if checkpoint is not None:
        trial_id = _trial_id(session)
        found = restore_checkpoint(checkpoint, trial_id, trial_dir=_trial_dir(spec, trial_id),
                                   uri=SweepStore(spec.storage.uri, spec.name).checkpoint_uri,
                                   say=_say if rank == 0 else _quiet)
        if found.state is not None:
            state = found.state
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            _apply_hyperparameters(optimizer, spec)  # this trial's (possibly mutated) values win
            scaler.load_state_dict(state["scaler"])
            first_epoch = state["epoch"] + 1
            train_seconds = float(state.get("train_seconds") or 0.0)  # 0: a checkpoint from before it was kept
            restored = {"restored_from": found.checkpoint.path, "restored_weights": weights_digest(model)}
        if found.skipped:  # reported with the first result: the driver records it (trainer/driver/events.py)
            restored["restore_skipped"] = found.skipped
    # The lr schedule is a function of (spec, steps done): rebuilt, not restored, so a PBT
    # mutation of the learning rate takes effect from the restored step on.
    lr_schedule = _lr_schedule(spec, optimizer, steps_per_epoch, steps_done=(first_epoch - 1) * steps_per_epoch)
    per_batch_schedule = spec.train.lr_schedule.name == "onecycle"
    if world_size > 1:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)  # DDP wrapper (gloo on CPU, nccl on GPU)
    board = (trial_board(spec, _trial_id(session), hparams, first_epoch=first_epoch, say=_say)
             if rank == 0 and hparams is not None else None)
    inference_ms = None  # measured once, after the first epoch this start trains (measure_inference_ms)

    for epoch in range(first_epoch, spec.train.epochs + 1):
        epoch_start = time.perf_counter()
        torch.manual_seed(_epoch_seed(spec.seed, epoch, rank))  # dropout etc.
        augment_rng = torch.Generator(device=device).manual_seed(_epoch_seed(spec.seed, epoch, rank))

        # --- train: this rank's shard of a fresh permutation, one optimizer step per batch
        model.train()
        loss_sum = torch.zeros((), device=device)  # summed on device: no host sync per step
        correct = torch.zeros((), device=device, dtype=torch.long)
        batches = epoch_batches(
            len(train_y), spec.train.batch_size, epoch=epoch, seed=spec.seed, rank=rank, world_size=world_size
        )
        for batch in batches:
            batch = batch.to(device)
            x = normalize(train_x[batch])
            if spec.data.augment:  # train only
                x = augment_batch(x, spec.data.augment, augment_rng, data.mean, data.std)
            x = x.contiguous(memory_format=memory_format)
            y = train_y[batch]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=spec.train.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if per_batch_schedule:
                lr_schedule.step()
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.argmax(1) == y).sum()
        if not per_batch_schedule:
            lr_schedule.step()
        samples = sum(len(b) for b in batches)
        train_loss, train_acc, train_samples = _global_mean(loss_sum, correct, samples, world_size)
        epoch_train_seconds = time.perf_counter() - epoch_start  # the training phase only
        train_seconds += epoch_train_seconds

        # --- validate: never augmented, same split for every trial of this seed
        val_stats: dict = {}  # the noise scale of val_loss, for the report's overfitting rule
        val_loss, val_acc = evaluate(model, val_x, val_y, amp_dtype, rank, world_size, stats=val_stats,
                                     normalize=normalize)

        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "val_samples": val_stats["samples"],  # n of the accuracy's binomial standard error
            "val_loss_se": val_stats["loss_se"],
            "lr": optimizer.param_groups[0]["lr"],  # for the next epoch
            "samples_per_second": train_samples / epoch_train_seconds,  # all workers together
            "epoch_seconds": time.perf_counter() - epoch_start,
            "train_samples": train_samples,
            "params": params,
            "train_seconds": train_seconds,
            "resumed_from_epoch": first_epoch - 1,  # 0 = fresh start
            "val_split": val_split,
            **(restored if epoch == first_epoch else {}),
        }
        if scaler.is_enabled():  # fp16: the loss scale after this epoch (halved at each overflow step, which is skipped)
            metrics["grad_scale"] = scaler.get_scale()
        if device.type == "cuda":  # the most this trial held on its GPU so far, all ranks' largest
            metrics["gpu_peak_bytes"] = _global_max(gpu_memory.peak_bytes(device), world_size, device)
        if world_size > 1:
            metrics["duplicate_samples"] = _samples_seen_twice(batches, len(train_y), device)
        if rank == 0:  # after epoch_seconds: its forward passes are no part of the epoch's time
            if inference_ms is None:
                inference_ms = measure_inference_ms(model, normalize(val_x[:INFERENCE_BATCH]), amp_dtype, memory_format)
            metrics["inference_ms"] = inference_ms
            print(f"epoch {epoch}/{spec.train.epochs}: train loss {train_loss:.4f} acc {train_acc:.4f}, "
                  f"val loss {val_loss:.4f} acc {val_acc:.4f} ({metrics['epoch_seconds']:.1f} s)", flush=True)

        # --- checkpoint (rank 0 writes; every rank must report) and report
        wants_checkpoint = epoch % spec.checkpoint.every == 0 or epoch == spec.train.epochs
        with tempfile.TemporaryDirectory(prefix="ckpt-") as ckpt_dir:
            checkpoint = None
            if wants_checkpoint and rank == 0:
                write_start = time.perf_counter()
                save_checkpoint(ckpt_dir, spec, data, model, optimizer, scaler, epoch, metrics)
                metrics["checkpoint_seconds"] = time.perf_counter() - write_start  # serialize + local write
                metrics["checkpoint_bytes"] = sum(f.stat().st_size for f in Path(ckpt_dir).iterdir())
                checkpoint = session.Checkpoint.from_directory(ckpt_dir)
            if board is not None:  # before the report: a trial Tune stops may never return from it
                board.epoch(metrics)
            session.report(metrics, checkpoint=checkpoint)


@torch.no_grad()
def evaluate(model, x, y, amp_dtype, rank: int = 0, world_size: int = 1, batch_size: int = 1024,
             stats: dict | None = None, normalize: Callable | None = None):
    """Mean loss and accuracy over (this rank's shard of) x, y, combined across ranks. ``stats``, if
    given, receives ``samples`` (images evaluated, all ranks) and ``loss_se``: the standard error of
    the mean loss, std of the per-image losses / sqrt(samples), nats (the report's noise scale).
    ``normalize``: held images → model input, per batch (SplitData.normalizer); None: x is input."""
    model.eval()
    shard = torch.arange(rank, len(y), world_size, device=y.device)
    loss_sum = torch.zeros((), device=y.device)
    loss_squares = torch.zeros((), device=y.device)
    correct = torch.zeros((), device=y.device, dtype=torch.long)
    for start in range(0, len(shard), batch_size):
        idx = shard[start : start + batch_size]
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x[idx] if normalize is None else normalize(x[idx]))
        losses = F.cross_entropy(logits.float(), y[idx], reduction="none")
        loss_sum += losses.sum()
        loss_squares += losses.square().sum()
        correct += (logits.argmax(1) == y[idx]).sum()
    loss, acc, count = _global_mean(loss_sum, correct, len(shard), world_size)
    if stats is not None:
        if world_size > 1:
            dist.all_reduce(loss_squares)
        # sample variance of the per-image losses (n - 1), from the sums: one pass, no per-image copy
        variance = max(0.0, loss_squares.item() / max(count, 1) - loss**2) * count / max(count - 1, 1)
        stats.update(samples=count, loss_se=math.sqrt(variance / max(count, 1)))
    return loss, acc


# inference_ms: the first images of the validation split (the same ones for every trial of a sweep), at
# this batch size whatever train.batch_size is; warm-up passes first (allocator, oneDNN/cuDNN's choice
# of kernels), then the median of the timed ones.
INFERENCE_BATCH = 256  # images (fewer when the validation split is smaller)
INFERENCE_WARMUP = 2  # passes
INFERENCE_REPEATS = 5  # timed passes


@torch.no_grad()
def measure_inference_ms(model, images, amp_dtype, memory_format=torch.contiguous_format) -> float:
    """Milliseconds per image of a forward pass over ``images`` (model inputs, already normalized):
    eval mode, no_grad, the trial's precision (``amp_dtype``) and memory format, on the images'
    device (CUDA synchronized around each pass); the median of INFERENCE_REPEATS passes after
    INFERENCE_WARMUP. Once per trial start, not per epoch: latency depends on the architecture,
    input size, precision and device, none of which an epoch changes, and measuring it every epoch
    would only spend time and add noise. Machine- and load-dependent (the trials beside it share
    the CPU or GPU): trials compare only on one kind of machine under a similar load."""
    model = _unwrap(model)  # DDP: this rank's own copy, no collective in a forward pass
    model.eval()
    x = images.contiguous(memory_format=memory_format)
    cuda = x.device.type == "cuda"

    def forward() -> float:
        if cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            model(x)
        if cuda:
            torch.cuda.synchronize(x.device)
        return time.perf_counter() - start

    for _ in range(INFERENCE_WARMUP):
        forward()
    seconds = statistics.median(forward() for _ in range(INFERENCE_REPEATS))
    return seconds * 1000 / len(x)


def reject_if_infeasible(spec: SweepSpec) -> None:
    """Raise TrialRejected when the trial's config breaks a constraint known before training
    (params): counted on a model built on the meta device (shapes only: no memory, no data
    loaded, no transferred weights fetched), in well under a second."""
    early = [parse_constraint(text) for text in spec.constraints]
    early = [c for c in early if c.before_training]
    if not early:
        return
    input_shape, num_classes = dataset_shape(spec.data)
    params = trainable_parameters(spec.model, input_shape, num_classes)
    broken = [v for c in early if (v := c.violation(params)) is not None]
    if broken:
        raise TrialRejected(message="; ".join(broken))


def save_checkpoint(directory, spec, data, model, optimizer, scaler, epoch: int, metrics: dict) -> None:
    state = {
        # what rebuilding the model needs without reading the dataset again
        "input_shape": list(data.input_shape),
        "class_names": list(data.class_names),
        # The train split's per-channel statistics the inputs were normalised with (raw pixel
        # scale, e.g. [0, 1]): an export puts them inside the model (trainer/export.py), so
        # serving it never needs the dataset again.
        "normalization": {"mean": list(data.mean), "std": list(data.std)},
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "train_seconds": metrics.get("train_seconds"),  # the sum a restore continues
    }
    torch.save(state, Path(directory) / checkpoint_format.STATE)
    (Path(directory) / checkpoint_format.SPEC).write_text(spec.model_dump_json(indent=2))
    checkpoint_format.write_manifest(directory, epoch, metrics)


class Restore(NamedTuple):
    """What ``restore_checkpoint`` found."""

    state: dict | None  # the saved state to continue from; None: start fresh (epoch 1)
    checkpoint: object | None  # the checkpoint it came from
    skipped: list[dict]  # the corrupt checkpoints passed over, in the order tried: {"uri", "reason"}


class CorruptCheckpoint(Exception):
    """A checkpoint that does not match its manifest or does not load: never restored from."""


_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")  # Tune's name for the trial's k-th checkpoint
_STATE_KEYS = ("model", "optimizer", "scaler", "epoch")


def restore_checkpoint(checkpoint, trial_id: str, *, trial_dir: str, uri: Callable[[str], str] = str,
                       say: Callable[[str], None] = print) -> Restore:
    """The state to resume from, trying ``checkpoint`` (the one Tune restores) first.

    Each candidate is checked against its sha256 manifest (service/core/checkpoint.py), then loaded
    (weights_only, to the CPU). One that fails either is corrupt: ``say`` names it and why, and
    the next is tried: this trial's own other checkpoints in storage (``checkpoint``'s siblings),
    newest epoch first, only those of an epoch below the corrupt one's (never ahead of what Tune
    recorded). When the corrupt one is not this trial's (a PBT donor's, or a Ray Train run's) the
    candidates are this trial's own checkpoints under ``trial_dir`` (a path in
    ``checkpoint.filesystem``), any epoch: the trial goes on from where it was, with its own
    weights (and its own, possibly mutated, config). None intact: a fresh start, said so.

    Not corruption, so raised: a storage error other than a missing file (an outage must not cost
    the trial its progress: Tune restarts it), and a state of another shape (``load_state_dict``
    in ``fit``: a config error, e.g. a donor of another architecture). ``uri``: checkpoint path →
    the URI named in messages and in ``skipped``."""
    skipped: list[dict] = []
    fallbacks = None
    current = checkpoint
    while current is not None:
        try:
            state = _load_verified(current)
        except CorruptCheckpoint as err:
            skipped.append({"uri": uri(current.path), "reason": str(err)})
            if fallbacks is None:
                fallbacks = iter(_fallback_checkpoints(checkpoint, trial_id, trial_dir))
            current = next(fallbacks, None)
            if current is None:
                then = "no earlier intact checkpoint of this trial: starting fresh (epoch 1)"
            elif len(skipped) == 1 and PurePosixPath(checkpoint.path).parent.name != trial_id:
                then = f"trying this trial's own latest, {uri(current.path)}"
            else:
                then = f"trying the previous one, {uri(current.path)}"
            say(f"skipping checkpoint {skipped[-1]['uri']}: {err}; {then}")
            continue
        if skipped:
            say(f"restored from {uri(current.path)} (epoch {state['epoch']})")
        return Restore(state, current, skipped)
    return Restore(None, None, skipped)


def _load_verified(checkpoint) -> dict:
    """The checkpoint's saved state once its files match the manifest; CorruptCheckpoint otherwise."""
    name = PurePosixPath(checkpoint.path).name
    try:
        with checkpoint.as_directory() as directory:  # local: the directory itself; S3: a download
            if not Path(directory).is_dir():
                raise FileNotFoundError(directory)
            try:
                checkpoint_format.verify(directory, source=name)
            except checkpoint_format.CheckpointError as err:
                raise CorruptCheckpoint(str(err)) from None
            try:
                # To the CPU: a device error (CUDA out of memory) must not read as corruption;
                # load_state_dict copies onto the model's device.
                state = torch.load(Path(directory) / checkpoint_format.STATE, map_location="cpu", weights_only=True)
            except (MemoryError, OSError):
                raise
            except Exception as err:  # matches its manifest, yet unreadable: it was written so
                first_line = (str(err).strip().splitlines() or [""])[0][:200]
                raise CorruptCheckpoint(f"{checkpoint_format.STATE} of {name} does not load "
                                        f"({type(err).__name__}: {first_line})") from None
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{name} is not in storage (deleted, or never completely written)") from None
    if not isinstance(state, dict) or not all(key in state for key in _STATE_KEYS):
        raise CorruptCheckpoint(f"{checkpoint_format.STATE} of {name} holds no trainer state "
                                f"(expected {', '.join(_STATE_KEYS)})")
    return state


def _fallback_checkpoints(failed, trial_id: str, trial_dir: str) -> list:
    """The checkpoints to try after ``failed``, best first (see ``restore_checkpoint``)."""
    fs, failed_path = failed.filesystem, PurePosixPath(failed.path)
    own = failed_path.parent.name == trial_id
    directory = str(failed_path.parent) if own else trial_dir
    failed_epoch = _manifest_epoch(fs, str(failed_path)) if own else None
    failed_match = _CHECKPOINT_DIR.match(failed_path.name)
    failed_index = int(failed_match[1]) if failed_match else math.inf
    found = []
    for info in fs.get_file_info(pyarrow.fs.FileSelector(directory, allow_not_found=True)):
        match = _CHECKPOINT_DIR.match(info.base_name)
        if info.type != pyarrow.fs.FileType.Directory or not match or (own and info.base_name == failed_path.name):
            continue
        epoch = _manifest_epoch(fs, info.path)
        if epoch is None:
            continue  # no readable manifest: not a checkpoint to continue from (it is never tried)
        # Older than the failed one: by epoch when its manifest says, else by Tune's numbering.
        if own and (epoch >= failed_epoch if failed_epoch is not None else int(match[1]) >= failed_index):
            continue
        found.append((epoch, int(match[1]), info.path))
    return [type(failed)(path, filesystem=fs) for _, _, path in sorted(found, reverse=True)]


def _manifest_epoch(fs, directory: str) -> int | None:
    """The epoch a checkpoint's manifest names; None when it has no readable one. (Other storage
    errors raise: an outage is not a missing checkpoint.)"""
    try:
        with fs.open_input_stream(f"{directory}/{checkpoint_format.MANIFEST}") as f:
            return int(json.loads(f.read())["epoch"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- precision
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run in hardware. Elsewhere they are emulated (slower than fp32)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16") or caps.get("amx_tile"))


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; None means plain fp32."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


# ----------------------------------------------------------------------------- small parts
def _optimizer(spec: SweepSpec, params):
    o = spec.train.optimizer
    # fused: one kernel updates every parameter, instead of a handful of ops per tensor (seed 000's
    # MLP at batch 64 spent as long in Adam's per-tensor ops as in its matmuls). Adadelta has none.
    optimizers = {
        "sgd": lambda: torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
            weight_decay=o.weight_decay, fused=True,
        ),
        "adam": lambda: torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, fused=True),
        "adamw": lambda: torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, fused=True),
        "adagrad": lambda: torch.optim.Adagrad(params, lr=o.lr, weight_decay=o.weight_decay, fused=True),
        "adadelta": lambda: torch.optim.Adadelta(params, lr=o.lr, weight_decay=o.weight_decay),
    }
    return optimizers[o.name]()


def _apply_hyperparameters(optimizer, spec: SweepSpec) -> None:
    """Overwrite restored optimizer hyperparameters with this trial's (PBT may have mutated them)."""
    o = spec.train.optimizer
    for group in optimizer.param_groups:
        group["lr"] = o.lr
        group.pop("initial_lr", None)  # set again by the lr schedule from the new lr
        if "weight_decay" in group:
            group["weight_decay"] = o.weight_decay
        if "momentum" in group:
            group["momentum"] = o.momentum


def _lr_schedule(spec: SweepSpec, optimizer, steps_per_epoch: int, steps_done: int = 0):
    """The lr schedule, fast-forwarded by ``steps_done`` steps (epochs; batches for onecycle)."""
    s, epochs = spec.train.lr_schedule, spec.train.epochs
    schedules = {
        "none": lambda: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs),
        "step": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma),
        "exponential": lambda: torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=s.gamma),
        "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=s.max_lr or 10 * spec.train.optimizer.lr,
            total_steps=epochs * steps_per_epoch,
        ),
    }
    schedule = schedules[s.name]()
    if s.name != "onecycle":
        steps_done //= steps_per_epoch  # epoch-stepped schedules count epochs
    with warnings.catch_warnings():  # replaying steps without optimizer steps is intended here
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for _ in range(steps_done):
            schedule.step()
    return schedule


def weights_digest(model) -> str:
    """sha256 over the model's state (names, dtypes and bytes): equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in _unwrap(model).state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch) * 1_009 + rank


def _reuse_freed_memory() -> None:
    """Keep freed blocks of up to 32 MB in the heap instead of handing them back to the OS.

    Every step frees and allocates again gradients and activations of a few MB. glibc returns
    such blocks to the OS (heap trimming, munmap) and the next step page-faults them back in:
    ~700 page faults per step for seed 000's MLP, 15-25% of its step time on CPU. Kept, they cost
    only the memory the next step needs anyway. 32 MB is glibc's ceiling for this setting;
    without glibc (musl, macOS) this does nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(spec: SweepSpec) -> torch.device:
    if spec.resources.gpus_per_worker > 0 and torch.cuda.is_available():
        if dist.is_available() and dist.is_initialized():
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cuda")
    return torch.device("cpu")


def _unwrap(model):
    return getattr(model, "module", model)


def _trial_id(session) -> str:
    """This trial's id: an N-worker trial's session carries it; a 1-worker trial's is Tune's context."""
    return getattr(session, "trial_id", None) or session.get_context().get_trial_id()


def _trial_dir(spec: SweepSpec, trial_id: str) -> str:
    """The trial's directory in storage as a path inside Ray's storage filesystem ("bucket/prefix/..."
    on S3: the inverse of SweepStore.checkpoint_uri)."""
    return SweepStore(spec.storage.uri, spec.name).path(trial_id).removeprefix("s3://")


def _say(line: str) -> None:
    print(line, flush=True)  # into the trial's log (trainer/trial_log.py)


def _quiet(line: str) -> None:
    pass


def _global_mean(loss_sum, correct, count: int, world_size: int) -> tuple[float, float, int]:
    """(mean loss, accuracy, count) over all ranks: one all-reduce, one host sync."""
    totals = torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(count), device=loss_sum.device)])
    if world_size > 1:
        dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    return loss_sum / max(count, 1), correct / max(count, 1), int(count)


def _global_max(value: int, world_size: int, device) -> int:
    """The largest of the ranks' ``value`` (one all-reduce; the value itself with one worker)."""
    if world_size == 1:
        return value
    total = torch.tensor(value, dtype=torch.int64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.MAX)
    return int(total.item())


def _fingerprint(indices: torch.Tensor) -> str:
    return hashlib.sha1(indices.numpy().tobytes()).hexdigest()[:12]


def _samples_seen_twice(batches, num_samples: int, device) -> int:
    """DDP sanity check: how many training samples more than one rank trained on this epoch."""
    seen = torch.zeros(num_samples, dtype=torch.int32, device=device)
    for batch in batches:
        seen[batch.to(device)] += 1
    dist.all_reduce(seen)
    return int((seen > 1).sum())


@functools.lru_cache(maxsize=2)
def _dataset(data_spec_json: str, seed: int) -> SplitData:
    """Loaded once per process: reused actors run the next trial without re-reading the data."""
    from service.core.spec import DATA_SPEC

    return load_dataset(DATA_SPEC.validate_json(data_spec_json), seed)


# ----------------------------------------------------------------------------- Ray entry points
def tune_trial(trial_config: dict, *, spec_json: str, log_attempt: int = 1) -> None:
    """Tune function trainable: ``trial_config`` holds the sampled values by dotted path.
    ``log_attempt``: this start's attempt number in the trial's log (N-worker trials' ranks log under it)."""
    import ray.tune

    spec = concrete(SweepSpec.model_validate_json(spec_json), trial_config)
    reject_if_infeasible(spec)  # before any data is loaded
    if spec.resources.workers_per_trial == 1:
        try:
            fit(spec, ray.tune, hparams=trial_config)
        except torch.OutOfMemoryError as err:  # over its share of a GPU: say the cap and the peak
            gpu_memory.raise_if_over_cap(err)
            raise
    else:
        _fit_distributed(spec, log_attempt, hparams=trial_config)


def _fit_distributed(spec: SweepSpec, log_attempt: int = 1, hparams: dict | None = None) -> None:
    """N workers: a TorchTrainer runs ``fit`` under DDP; every report is passed on to Tune *with*
    its checkpoint, so Tune holds the trial's checkpoints as it does for 1-worker trials (crash
    restarts and PBT exploits then work the same way), and a restarted or exploited trial hands
    Tune's checkpoint to the new worker group."""
    import threading
    import uuid

    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    # Ray Train sends the workers' print() to its logger as well as to stdout; the worker's stdout
    # is already teed into the trial log (trainer/trial_log.py), so every line would land twice.
    # (Ray Train hands this variable on from here to its controller and workers.)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})  # back-pressure: one report in flight
    sweep_fs, sweep_storage_path = storage.pyarrow_filesystem(spec.storage.uri)
    r = spec.resources
    context = ray.tune.get_context()
    start_from = ray.tune.get_checkpoint()
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "spec_json": spec.model_dump_json(),
            # Train V2 has no resume_from_checkpoint: the workers start from this one themselves.
            "start_from": ray.train.Checkpoint(start_from.path, filesystem=start_from.filesystem) if start_from else None,
            # Each rank's output goes to the trial's log (rank 0 always, the others when they fail).
            "trial_id": context.get_trial_id(),
            "log_attempt": log_attempt,
            "hparams": hparams,  # rank 0 writes the trial's TensorBoard run
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.workers_per_trial,
            use_gpu=r.gpus_per_worker > 0,
            resources_per_worker={"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            # A fresh run per trial start: it must begin from Tune's checkpoint, not its own.
            name=f"train-{context.get_trial_id()}-{uuid.uuid4().hex[:8]}",
            # Rank 0 may run on another node than this trial: its checkpoints go to the sweep's
            # storage (S3 on a cluster), where this trial can read them to hand them on to Tune.
            # (Local storage: next to the trial's own directory.)
            storage_path=f"{sweep_storage_path}/{spec.name}/.train" if sweep_fs else str(Path(context.get_trial_dir()).parent),
            storage_filesystem=sweep_fs,
            callbacks=[_ForwardReports(reports)],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),  # Tune keeps the copies
        ),
    )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # re-raised in the trial thread below
            failure.append(err)
        finally:
            reports.put(None)

    threading.Thread(target=run, name="torch-trainer", daemon=True).start()
    while (item := reports.get()) is not None:
        metrics, checkpoint_path, filesystem = item
        checkpoint = ray.tune.Checkpoint(checkpoint_path, filesystem=filesystem) if checkpoint_path else None
        ray.tune.report(metrics, checkpoint=checkpoint)
    if failure:
        raise failure[0]


class _ForwardReports(UserCallback):
    """Ray Train callback (runs in the Train controller): rank 0's metrics + checkpoint → queue."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        path, filesystem = (checkpoint.path, checkpoint.filesystem) if checkpoint else (None, None)
        self.queue.put((dict(metrics[0]), path, filesystem))


def _train_worker(loop_config: dict) -> None:
    import ray.train

    from service.core.record import SweepStore
    from trainer.trial_log import captured_output

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    spec = SweepSpec.model_validate_json(loop_config["spec_json"])
    rank = ray.train.get_context().get_world_rank()
    with captured_output(SweepStore(spec.storage.uri, spec.name), loop_config["trial_id"],
                         loop_config["log_attempt"], rank=rank):
        try:
            fit(spec, _TrainSession(loop_config["start_from"], loop_config["trial_id"]), hparams=loop_config.get("hparams"))
        except torch.OutOfMemoryError as err:  # this rank over its share of a GPU: say the cap and the peak
            gpu_memory.raise_if_over_cap(err)
            raise


class _TrainSession:
    """``ray.train`` as ``fit`` uses it, but starting from the checkpoint Tune handed over unless
    this Train run has one of its own (after Ray Train restarted a failed worker group)."""

    def __init__(self, start_from, trial_id: str):
        import ray.train

        self._train, self._start_from = ray.train, start_from
        self.Checkpoint = ray.train.Checkpoint
        self.trial_id = trial_id  # the Tune trial this Train run belongs to

    def get_checkpoint(self):
        return self._train.get_checkpoint() or self._start_from

    def report(self, metrics: dict, checkpoint=None) -> None:
        self._train.report(metrics, checkpoint=checkpoint)
