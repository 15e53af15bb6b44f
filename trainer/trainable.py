"""The Tune trainable, importable without torch.

The sweep driver only hands this function to Tune; importing ``trainer.loop`` there would load
torch, torchvision and Ray Train into a process that trains nothing (~3 s of every sweep's
start-up, bench/README.md). The trial's worker imports the loop when it runs.
"""

from __future__ import annotations


def tune_trial(trial_config: dict, *, spec_json: str) -> None:
    from trainer.loop import tune_trial as run_trial

    run_trial(trial_config, spec_json=spec_json)
