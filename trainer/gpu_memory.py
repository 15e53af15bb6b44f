"""The memory guard of trials that share a GPU: a cap from the trial's share, its peak, and the
error that names both.

Ray packs trials onto one GPU by a number (``resources.gpus_per_worker: 0.25`` → four trials per
GPU) and enforces nothing: a trial that grows past its quarter takes memory the others counted
on, and any of them may then crash out of memory. So a trial with a fractional share caps its own
process: ``apply_cap`` calls ``torch.cuda.set_per_process_memory_fraction`` with the fraction
``memory_fraction`` computes, and PyTorch's caching allocator then refuses to hold more than that
(it frees its cached blocks and retries first). The fraction is the share less a reserve for what
lives outside the allocator (the CUDA context, cuDNN/cuBLAS handles, NCCL buffers: about
``CONTEXT_BYTES`` a process), so N packed trials' caps plus their contexts fit the card. Whole
GPUs (share ≥ 1) and CPU trials get no cap.

A trial that exceeds its cap raises ``torch.OutOfMemoryError`` inside PyTorch; ``over_cap`` turns
it into ``GpuMemoryCapExceeded`` (a subclass; ``raise_if_over_cap`` at the trial's entry points), whose message names the cap, the share it came from,
the trial's peak and what it asked for, and what to change. It is final (trainer/trainable.py's
``final_error``): a restart runs the same config under the same cap and fails the same way; the
trials beside it go on.

``peak_bytes`` is what the loop reports each epoch as ``gpu_peak_bytes`` (the record's
EpochResult, the exporter's ``sweep_trial_gpu_peak_bytes``): the most memory the trial's process
held in PyTorch's allocator since the trial started (``torch.cuda.max_memory_reserved``), the
quantity the cap limits; the largest of its ranks for an N-worker trial.

``memory_fraction`` is plain arithmetic (tested on CPU, tests/trainer/test_gpu_memory.py); the
rest needs CUDA and is exercised by tests/gpu/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

CONTEXT_BYTES = 1 << 30  # per process, outside PyTorch's allocator: the CUDA context, library handles, NCCL
GIB = 1 << 30


@dataclass(frozen=True)
class Cap:
    """The cap a trial's process put on its CUDA memory."""

    share: float  # resources.gpus_per_worker
    fraction: float  # of the device's total memory, as given to set_per_process_memory_fraction
    total_bytes: int  # the device's memory

    @property
    def cap_bytes(self) -> int:
        return int(self.fraction * self.total_bytes)

    def describe(self) -> str:
        return (f"{gib(self.cap_bytes)} (gpus_per_worker {self.share:g} of {gib(self.total_bytes)}, "
                f"less {gib(self.total_bytes * self.share - self.cap_bytes)} for the CUDA context)")


def memory_fraction(share: float, total_bytes: int, context_bytes: int = CONTEXT_BYTES) -> float | None:
    """The fraction of the device's memory a trial with GPU share ``share`` may hold in PyTorch's
    allocator; None: no cap (a CPU trial, share 0, or whole GPUs, share ≥ 1).

    share × total, less the reserve for the process's context, which is at most half the share
    (a small share on a small card keeps half of it for tensors rather than nothing)."""
    if share <= 0 or share >= 1:
        return None
    if total_bytes <= 0:
        raise ValueError(f"device memory must be positive, got {total_bytes} bytes")
    share_bytes = share * total_bytes
    return (share_bytes - min(context_bytes, share_bytes / 2)) / total_bytes


_cap: Cap | None = None  # this process's (set_per_process_memory_fraction is process-wide)


def apply_cap(share: float, device: torch.device) -> Cap | None:
    """Cap this process's CUDA memory on ``device`` by its share (see the module doc), and start
    counting its peak afresh (a reused worker runs one trial after another). None: no cap."""
    global _cap
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = memory_fraction(share, total)
    # A reused worker may have capped itself for an earlier trial of another share: 1.0 lifts it.
    torch.cuda.set_per_process_memory_fraction(1.0 if fraction is None else fraction, device)
    _cap = None if fraction is None else Cap(share=share, fraction=fraction, total_bytes=total)
    return _cap


def current_cap() -> Cap | None:
    return _cap


def peak_bytes(device: torch.device) -> int | None:
    """The most this process has held in PyTorch's CUDA allocator on ``device`` since the trial
    started (``apply_cap``); None on the CPU."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_reserved(device))


class GpuMemoryCapExceeded(torch.OutOfMemoryError):
    """A trial needed more CUDA memory than its share of the GPU allows (``over_cap``)."""


_TRIED = re.compile(r"Tried to allocate ([\d.]+ [KMGT]?i?B)")


def over_cap(err: BaseException, cap: Cap | None = None, peak: int | None = None) -> BaseException:
    """``err`` as the trial's error: a CUDA out-of-memory error of a capped trial becomes
    ``GpuMemoryCapExceeded`` naming the cap and the trial's peak; anything else is returned as is.
    ``cap``/``peak`` default to this process's (given by tests)."""
    cap = cap or _cap
    if cap is None or not isinstance(err, torch.OutOfMemoryError) or isinstance(err, GpuMemoryCapExceeded):
        return err
    if peak is None:
        peak = int(torch.cuda.max_memory_reserved()) if torch.cuda.is_available() else 0
    asked = _TRIED.search(str(err))
    return GpuMemoryCapExceeded(
        f"the trial exceeded its GPU memory cap of {cap.describe()}: its peak was {gib(peak)} held by "
        f"PyTorch's allocator{f', when it asked for {asked[1]} more' if asked else ''}. Lower "
        f"train.batch_size or the model's size, or give trials a larger share (resources.gpus_per_worker). "
        f"PyTorch said: {str(err).strip().splitlines()[0][:300] if str(err).strip() else 'out of memory'}")


def raise_if_over_cap(err: BaseException) -> None:
    """Raise ``over_cap(err)`` (from ``err``) when that is a new error; else return (re-raise ``err``)."""
    capped = over_cap(err)
    if capped is not err:
        raise capped from err


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"
