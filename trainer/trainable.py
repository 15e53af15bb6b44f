"""The Tune trainable, importable without torch.

The sweep driver only hands this function to Tune; importing ``trainer.loop`` there would load
torch, torchvision and Ray Train into a process that trains nothing (~3 s of every sweep's
start-up, bench/README.md). The trial's worker imports the loop when it runs, inside the capture
of the trial's output into its log in storage (trainer/trial_log.py).
"""

from __future__ import annotations


def tune_trial(trial_config: dict, *, spec_json: str) -> None:
    import ray.tune

    from service.core.record import SweepStore
    from service.core.spec import SweepSpec
    from trainer.trial_log import captured_output

    spec = SweepSpec.model_validate_json(spec_json)
    trial_id = ray.tune.get_context().get_trial_id()
    with captured_output(SweepStore(spec.storage.uri, spec.name), trial_id) as attempt:
        from trainer.loop import tune_trial as run_trial

        run_trial(trial_config, spec_json=spec_json, log_attempt=attempt)
