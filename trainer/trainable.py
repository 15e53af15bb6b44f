"""The Tune trainable, importable without torch.

The sweep driver only hands this function to Tune; importing ``trainer.loop`` there would load
torch, torchvision and Ray Train into a process that trains nothing (~3 s of every sweep's
start-up, bench/README.md). The trial's worker imports the loop when it runs, inside the capture
of the trial's output into its log in storage (trainer/trial_log.py).

An error no restart can fix leaves the trial as ``FinalTrialError`` (``final_error`` says which),
after the log got the original traceback; the driver then fails the trial at once
(trainer/driver/retries.py).
"""

from __future__ import annotations

import re

from service.core.errors import DataFormatError, FinalTrialError, UserError


def tune_trial(trial_config: dict, *, spec_json: str) -> None:
    import ray.tune

    from service.core.record import SweepStore
    from service.core.spec import SweepSpec
    from trainer.trial_log import captured_output

    spec = SweepSpec.model_validate_json(spec_json)
    trial_id = ray.tune.get_context().get_trial_id()
    try:
        with captured_output(SweepStore(spec.storage.uri, spec.name), trial_id) as attempt:
            from trainer.loop import tune_trial as run_trial

            run_trial(trial_config, spec_json=spec_json, log_attempt=attempt)
    except Exception as err:  # the trial's log has the original traceback already
        final = final_error(err)
        if final is None or final is err:  # retried, or the marker itself (TrialRejected): as it is
            raise
        raise final from err


# RuntimeError texts of a model that does not fit its input or its checkpoint (torch's own words).
_SHAPE_MISMATCH = re.compile(
    r"size mismatch|shapes cannot be multiplied|Error\(s\) in loading state_dict"
    r"|expected input\[.*\] to have \d+ channels"
)


def final_error(err: BaseException) -> FinalTrialError | None:
    """The marker for an error that no restart of the trial can fix, else None (retried).

    The rule, in one place: a restart runs the same config on the same data with the same seed,
    so it fails again on

    - a missing file: FileNotFoundError, NotADirectoryError, IsADirectoryError (data, weights);
    - a bad data format: DataFormatError (trainer/data/formats.py's readers);
    - a shape mismatch: a RuntimeError from torch saying "size mismatch" (load_state_dict, linear),
      "shapes cannot be multiplied" (linear), "Error(s) in loading state_dict", or that a conv
      expected a different number of channels;
    - an invalid config or spec: pydantic's ValidationError, SpecError, UserError;
    - out of memory with this config: torch.OutOfMemoryError (CUDA), MemoryError; a trial over its
      share of a packed GPU, trainer/gpu_memory.py's GpuMemoryCapExceeded (the same cap next time);
    - a full disk or an exceeded quota (ENOSPC, EDQUOT): the trial stops with the message, the
      driver stops the sweep when its own record writes find the storage full.

    Everything else is retried up to resources.max_failures times: crashes (a killed worker or a
    lost node reach Tune as RayActorError, not as an exception here), transient storage errors,
    ConnectionError, OSError outside the missing-file family, plain ValueError, ... .
    An N-worker trial raises Ray Train's WorkerGroupError: final when any rank's error is (that
    rank would fail the same way again); the marker then names that rank's exception.
    """
    if isinstance(err, FinalTrialError):
        return err
    workers = getattr(err, "worker_failures", None)  # ray.train.WorkerGroupError: {rank: exception}
    candidates = [err, *(workers[rank] for rank in sorted(workers))] if isinstance(workers, dict) else [err]
    for exc in candidates:
        exc = getattr(exc, "_base_exc", exc)  # Ray Train's UserExceptionWithTraceback, should one remain
        if isinstance(exc, FinalTrialError):
            return exc
        reason = _why_final(exc)
        if reason is not None:
            return FinalTrialError(type(exc).__name__, str(exc), reason)
    return None


def _why_final(exc: BaseException) -> str | None:
    from pydantic import ValidationError

    from service.core.loading import SpecError

    kind = type(exc)
    if kind.__name__ == "GpuMemoryCapExceeded":  # trainer/gpu_memory.py, without importing torch
        return "over its GPU memory cap with this config"
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return "a missing file"
    if isinstance(exc, DataFormatError):
        return "a bad data format"
    if kind.__name__ == "OutOfMemoryError" and kind.__module__.split(".")[0] == "torch":
        return "out of memory with this config"  # torch.OutOfMemoryError, without importing torch
    if isinstance(exc, MemoryError):
        return "out of memory with this config"
    if isinstance(exc, RuntimeError) and _SHAPE_MISMATCH.search(str(exc)):
        return "a shape mismatch"
    if isinstance(exc, (ValidationError, SpecError, UserError)):
        return "an invalid config"
    if _storage_full(exc):
        return "a full disk or an exceeded quota"  # the next checkpoint would not fit either
    return None


def _storage_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, from our writes (StorageFull) or from Ray's checkpoint upload (an OSError,
    possibly pyarrow's, whose message is all that carries the cause)."""
    import errno

    from service.core.storage import StorageFull

    if isinstance(exc, StorageFull):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, OSError) and ("No space left on device" in str(exc) or "Disk quota exceeded" in str(exc))
