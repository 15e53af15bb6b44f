"""What the GPU tests share: concrete specs of the studies' models on synthetic CIFAR-shaped data,
and the training loop run in this process."""

from __future__ import annotations

from service.core.spec import SweepSpec

# The studies' models (seed 000's CNN and seed 001's CIFAR10Net as bench/common.py has them; seed
# 002's small ResNet; ResNet-18 with the CIFAR stem).
MODELS = {
    "seed-000 CNN": {"name": "cnn", "num_conv_layers": 2, "filters": 64, "num_fc_layers": 2, "hidden_size": 128},
    "cifar10net": {"name": "cifar10net"},
    "seed-002 small ResNet": {"name": "small_resnet", "h_1": 64, "h_2": 128},
    "ResNet-18 (CIFAR stem)": {"name": "resnet", "depth": 18, "mode": "scratch", "cifar_stem": True},
}


def spec(model: dict, *, amp: str = "auto", epochs: int = 2, samples: int = 4096, batch_size: int = 64,
         gpus: float = 1, classes: int = 10, storage: str = "/tmp/sweep-gpu-tests", name: str = "gpu",
         **changes) -> SweepSpec:
    """A spec of ``model`` on synthetic 3×32×32 data; ``changes`` are merged into its sections
    (e.g. ``train={"batch_size": {"grid": [64, 128]}}``)."""
    base = {
        "name": name, "seed": 0,
        "data": {"name": "synthetic", "channels": 3, "image_size": 32, "num_classes": classes,
                 "num_samples": samples, "val_fraction": 0.1},
        "model": model,
        "train": {"epochs": epochs, "batch_size": batch_size, "optimizer": {"name": "adam", "lr": 1e-3}, "amp": amp},
        "resources": {"cpus_per_worker": 2, "gpus_per_worker": gpus},
        "checkpoint": {"every": epochs},
        "storage": {"uri": storage},
        "metrics": {"port": 0},
    }
    for section, values in changes.items():
        base[section] = {**base[section], **values} if isinstance(base.get(section), dict) else values
    return SweepSpec.model_validate(base)


class Session:
    """What trainer.loop.fit needs from ray.tune, in this process: reports kept, checkpoints not."""

    class Checkpoint:
        @staticmethod
        def from_directory(path):
            return None

    def __init__(self):
        self.reports: list[dict] = []

    def get_checkpoint(self):
        return None

    def report(self, metrics: dict, checkpoint=None) -> None:
        self.reports.append(dict(metrics))


def fit(spec: SweepSpec) -> list[dict]:
    from trainer.loop import fit as train

    session = Session()
    train(spec, session)
    return session.reports
