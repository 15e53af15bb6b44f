"""Errors a restart cannot fix are not retried: the one hook into Ray Tune for it (no torch).

Tune retries every failed trial up to ``FailureConfig.max_failures`` times and has no public way to
say "this one is final". Its controller (ray/tune/execution/tune_controller.py,
``_process_trial_failure``) calls ``trial.handle_error(exc)`` and then ``trial.should_recover()``
(``num_failures <= max_failures``) to decide. ``install()`` wraps both methods of Tune's ``Trial``:

- ``handle_error`` notes whether ``exc`` carries our marker, ``FinalTrialError`` (the trainable
  raises it for errors no restart can fix: trainer/trainable.py's ``final_error``), as the
  RayTaskError's ``cause``, or among a Ray Train failure's ``worker_failures``;
- ``should_recover`` then answers False once for that failure (the note is cleared, so a later
  failure of the same trial, e.g. after ``sweepctl resume``, is judged on its own); Tune then
  errors the trial at once (``on_trial_error``) and the sweep goes on.

Everything else, crashes included (a killed worker, a lost node: RayActorError), is still
retried ``max_failures`` times. The note lives in ``trial.temporary_state``, which Tune never
writes into its experiment snapshot (``Trial.__getstate__`` drops it), so resumes see nothing of it.
Installing twice changes nothing.
"""

from __future__ import annotations

from service.core.errors import FinalTrialError

_NOTE = "sweep_final_error"  # attribute on trial.temporary_state


def final_marker(exc: BaseException | None) -> FinalTrialError | None:
    """Our marker in the exception Tune hands the trial (or None: retry as usual)."""
    for candidate in (getattr(exc, "cause", None), exc):  # RayTaskError.cause: what the trial raised
        if isinstance(candidate, FinalTrialError):
            return candidate
        workers = getattr(candidate, "worker_failures", None)  # ray.train.WorkerGroupError
        if isinstance(workers, dict):
            for failure in workers.values():
                if isinstance(getattr(failure, "_base_exc", failure), FinalTrialError):
                    return getattr(failure, "_base_exc", failure)
    return None


def install() -> None:
    """Make Tune's trials fail at once on a ``FinalTrialError``. Idempotent."""
    from ray.tune.experiment.trial import Trial

    if getattr(Trial.should_recover, "_sweep_final_errors", False):
        return
    handle_error, should_recover = Trial.handle_error, Trial.should_recover

    def handle_error_noting_final(self, exc=None):
        setattr(self.temporary_state, _NOTE, final_marker(exc) is not None)
        return handle_error(self, exc)

    def should_recover_unless_final(self):
        if getattr(self.temporary_state, _NOTE, False):
            setattr(self.temporary_state, _NOTE, False)
            return False
        return should_recover(self)

    handle_error_noting_final.__doc__ = handle_error.__doc__
    should_recover_unless_final.__doc__ = should_recover.__doc__
    should_recover_unless_final._sweep_final_errors = True
    Trial.handle_error, Trial.should_recover = handle_error_noting_final, should_recover_unless_final
