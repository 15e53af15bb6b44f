"""Early stopping vs. the full grid on digits: best val_acc found and epochs spent, per scheduler.

    .venv/bin/python bench/scheduler_efficiency.py [--seeds 0 1] [--epochs 27]

The same grid (CNN width × hidden units × dropout × learning rate: 48 points, scikit-learn's 1,797
real 8×8 digits) runs per seed through the sweep driver (``run_sweep``, one local Ray): FIFO
(every trial runs every epoch), ASHA and synchronous HyperBand. Same spec + seed gives identical
metrics on CPU, so a trial that a scheduler lets finish scores exactly what it scored in the
grid: the question is only whether the scheduler keeps the good trials and how many epochs it
spends on the others. Prints, per seed and scheduler: the best val_acc (best epoch of any trial),
its distance to the grid's best in points, and the epochs run as a share of the grid's.

Each early-stopping scheduler runs twice: as `sweepctl run` runs it (a grid under ASHA/HyperBand
in a seeded random order, trainer.driver.space.runs_grid_shuffled) and, for comparison, in the grid's
own order (how Ray enumerates it: here every lr=3e-4 point first). ASHA decides asynchronously,
against the trials that reached a rung before: when the weakest trials come first, they set the
bar and almost nothing is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

from common import add_common_arguments, describe, finish, machine

from service.core.spec import SweepSpec  # noqa: E402

SCHEDULERS = {  # label: (scheduler spec, trial order)
    "grid (fifo)": ({"name": "fifo"}, "driver"),
    "asha": ({"name": "asha", "grace_period": 1, "reduction_factor": 3}, "driver"),
    "asha, grid order": ({"name": "asha", "grace_period": 1, "reduction_factor": 3}, "grid"),
    "hyperband": ({"name": "hyperband", "reduction_factor": 3}, "driver"),
    "hyperband, grid order": ({"name": "hyperband", "reduction_factor": 3}, "grid"),
}


@contextlib.contextmanager
def in_grid_order():
    """Run grids in the order Ray enumerates them, as the driver did before it shuffled them."""
    from trainer.driver import space

    original = space.runs_grid_shuffled
    space.runs_grid_shuffled = lambda spec: False
    try:
        yield
    finally:
        space.runs_grid_shuffled = original


def study(seed: int, epochs: int, scheduler: dict, storage: str, smoke: bool) -> SweepSpec:
    grid = {
        "filters": [8, 32] if smoke else [8, 16, 32],
        "hidden_size": [64] if smoke else [32, 64],
        "dropout": [0.0] if smoke else [0.0, 0.25],
        "lr": [1.0e-3, 3.0e-3] if smoke else [3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2],
    }
    return SweepSpec.model_validate({
        "name": f"sched-{scheduler['name']}-seed{seed}",
        "seed": seed,
        "data": {"name": "digits", "val_fraction": 0.2},
        "model": {"name": "cnn", "num_conv_layers": 2, "kernel_size": 3, "num_fc_layers": 2,
                  "filters": {"grid": grid["filters"]}, "hidden_size": {"grid": grid["hidden_size"]},
                  "dropout": {"grid": grid["dropout"]}},
        "train": {"epochs": epochs, "batch_size": 32, "amp": "off",
                  "optimizer": {"name": "adam", "lr": {"grid": grid["lr"]}}},
        "search": {"algorithm": "grid"},
        "scheduler": scheduler,
        "objective": {"metric": "val_acc", "mode": "max"},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
        "checkpoint": {"every": 1, "keep": 1},  # HyperBand pauses trials and resumes them from it
        "storage": {"uri": storage},
        "metrics": {"port": 0},
        "report": {"auto": False},  # what is timed is the sweep, not the report drawn after it
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=27, help="epochs of a full trial (HyperBand's max_t)")
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.epochs = [0], 3

    import ray

    from trainer.driver.sweep import run_sweep

    info = machine()
    print(f"machine: {describe(info)}")
    ray.init(num_cpus=info["cores"], include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sched-") as storage:
        for seed in args.seeds:
            for label, (scheduler, order) in SCHEDULERS.items():
                spec = study(seed, args.epochs, scheduler, storage, args.smoke)
                spec = spec.model_copy(update={"name": f"{spec.name}-{order}"})
                start = time.perf_counter()
                with in_grid_order() if order == "grid" else contextlib.nullcontext():
                    index = run_sweep(spec, echo=lambda line: None)
                seconds = time.perf_counter() - start
                trials = index.trials
                rows.append({
                    "seed": seed,
                    "scheduler": label,
                    "order": order,
                    "trials": len(trials),
                    "best_val_acc": max(t.best.val_acc for t in trials if t.best),
                    "best_trial_config": index.best.config if index.best else None,
                    "epochs": sum(t.epochs for t in trials),
                    "budget_epochs": len(trials) * args.epochs,
                    "seconds": seconds,
                })
                print(f"  seed {seed} {label}: done in {seconds:.0f} s", flush=True)
    ray.shutdown()

    print(f"digits, {rows[0]['trials']} grid points, up to {args.epochs} epochs each, seeds {args.seeds}")
    print(f"{'seed':>4} {'scheduler':<22} {'best val_acc':>12} {'vs grid':>8} {'epochs':>7} {'share':>6} {'seconds':>8}")
    for row in rows:
        grid = next(r for r in rows if r["seed"] == row["seed"] and r["scheduler"] == "grid (fifo)")
        row["points_below_grid"] = 100 * (grid["best_val_acc"] - row["best_val_acc"]) + 0.0  # no -0.00
        row["epoch_share"] = row["epochs"] / grid["epochs"]
        print(f"{row['seed']:>4} {row['scheduler']:<22} {row['best_val_acc']:>12.4f} {0.0 - row['points_below_grid']:>+7.2f}pt "
              f"{row['epochs']:>7} {row['epoch_share']:>6.1%} {row['seconds']:>8.0f}")
    for label in SCHEDULERS:
        if label.startswith("grid"):
            continue
        mine = [r for r in rows if r["scheduler"] == label]
        print(f"{label}: median {statistics.median(r['points_below_grid'] for r in mine):.2f} pt below the grid's best, "
              f"median {statistics.median(r['epoch_share'] for r in mine):.1%} of its epochs "
              f"(target: within 0.5 pt using <= 30%)")
    finish({"benchmark": "scheduler_efficiency", "machine": info, "epochs": args.epochs, "seeds": args.seeds,
            "rows": rows}, args.json)


if __name__ == "__main__":
    main()
