"""The HyperBand the driver builds never pauses a trial that has run all its epochs (Ray's own
pauses it until its bracket finishes, and can leave it paused forever: trainer/driver/hyperband.py).
Ray's real scheduler and Trial objects; the controller only records what it is asked to stop."""

from __future__ import annotations

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import HyperBandScheduler, TrialScheduler

from trainer.driver.hyperband import HyperBandStoppingAtMaxT

MAX_EPOCHS = 4


class Controller:
    def __init__(self, scheduler):
        self.scheduler, self.stopped = scheduler, []

    def stop_trial(self, trial):  # what Tune's controller does for a running trial it stops
        self.stopped.append(trial)
        self.scheduler.on_trial_complete(self, trial, trial.last_result)
        trial.set_status(Trial.TERMINATED)


def _trials(scheduler, controller, n):
    trials = []
    for i in range(n):
        trial = Trial("__fake", config={"i": i}, stub=True)
        scheduler.on_trial_add(controller, trial)
        trial.set_status(Trial.RUNNING)
        trials.append(trial)
    return trials


def _report(scheduler, controller, trial, epoch, val_acc=0.5):
    result = {"training_iteration": epoch, "val_acc": val_acc}
    trial.update_last_result(result)
    return scheduler.on_trial_result(controller, trial, result)


@pytest.mark.parametrize("cls", [HyperBandScheduler, HyperBandStoppingAtMaxT])
def test_a_trial_at_its_last_epoch_with_bracket_mates_still_training(cls):
    # max_t 4, eta 2: the first bracket (3 trials) has one milestone, epoch 4.
    scheduler = cls(time_attr="training_iteration", metric="val_acc", mode="max", max_t=MAX_EPOCHS,
                    reduction_factor=2)
    controller = Controller(scheduler)
    first, second, third = _trials(scheduler, controller, 3)
    assert _report(scheduler, controller, second, 2) == TrialScheduler.CONTINUE
    assert _report(scheduler, controller, third, 3) == TrialScheduler.CONTINUE
    action = _report(scheduler, controller, first, MAX_EPOCHS)
    if cls is HyperBandScheduler:
        assert action == TrialScheduler.PAUSE  # Ray's: paused until the others get there...
        # ...but while the pause saves its checkpoint the trial is still RUNNING. The others finish
        # the bracket then, its clean-up stops PAUSED trials only, and once the save lands the
        # trial is paused with nothing to resume or stop it: the sweep never ends.
        assert _report(scheduler, controller, third, MAX_EPOCHS) == TrialScheduler.PAUSE
        third.set_status(Trial.PAUSED)
        assert _report(scheduler, controller, second, MAX_EPOCHS) == TrialScheduler.STOP
        assert controller.stopped == [third]
        first.set_status(Trial.PAUSED)  # the save landed
        assert scheduler.choose_trial_to_run(controller) is None and first not in controller.stopped
        return
    assert action == TrialScheduler.STOP  # ours: done, nothing left to wait for
    controller.stop_trial(first)
    # The others run on and end the same way; nothing is left paused to be cleaned up.
    assert _report(scheduler, controller, third, MAX_EPOCHS) == TrialScheduler.STOP
    controller.stop_trial(third)
    assert _report(scheduler, controller, second, 3) == TrialScheduler.CONTINUE
    assert _report(scheduler, controller, second, MAX_EPOCHS) == TrialScheduler.STOP
    assert controller.stopped == [first, third]


def test_earlier_milestones_still_pause_and_halve():
    scheduler = HyperBandStoppingAtMaxT(time_attr="training_iteration", metric="val_acc", mode="max",
                                        max_t=MAX_EPOCHS, reduction_factor=2)
    controller = Controller(scheduler)
    trials = _trials(scheduler, controller, 6)  # 3 in the epoch-4 bracket, 3 in the epoch-2-then-4 one
    strong, weak, middling = trials[3:]
    assert _report(scheduler, controller, strong, 2, val_acc=0.9) == TrialScheduler.PAUSE
    strong.set_status(Trial.PAUSED)
    assert _report(scheduler, controller, weak, 2, val_acc=0.1) == TrialScheduler.PAUSE
    weak.set_status(Trial.PAUSED)
    # The last of the three reaches epoch 2: the bracket halves (keeps ceil(3/2) = 2), the weak one stops.
    assert _report(scheduler, controller, middling, 2, val_acc=0.5) == TrialScheduler.CONTINUE
    assert controller.stopped == [weak]
    assert scheduler.choose_trial_to_run(controller) is strong  # unpaused to go on to epoch 4
