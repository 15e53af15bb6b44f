"""Ray's synchronous HyperBand, with one change: a trial that reached ``max_t`` is stopped, not paused.

Ray pauses a trial that reached its bracket's milestone until the bracket's other trials reach
it too. At the last milestone (``max_t``, the spec's epochs) there is nothing left to compare:
once every trial is there the bracket is finished and its paused trials are stopped
(``_Bracket.cleanup_full``). That clean-up stops only trials already PAUSED. A trial whose pause
is still saving its checkpoint is RUNNING then; the pause lands afterwards and nothing ever
resumes or stops it, so the sweep waits forever (seen here: trial paused at epoch 4 of 4, every
other trial ended). Stopping such a trial at once is what the finished bracket would do to it
anyway, and leaves nothing to race."""

from __future__ import annotations

from ray.tune.schedulers import HyperBandScheduler, TrialScheduler


class HyperBandStoppingAtMaxT(HyperBandScheduler):
    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.PAUSE and result.get(self._time_attr, 0) >= self._max_t_attr:
            return TrialScheduler.STOP  # the controller's stop calls on_trial_complete: the bracket drops it
        return action
