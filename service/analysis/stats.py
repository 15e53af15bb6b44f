"""The report's noise scale: how far a trial's numbers can be trusted, as pure functions.

    binomial_se, wilson_interval    the sampling error of an accuracy measured on n images
    metric_se                       the standard error of one epoch's metric, from what the record holds
    indistinguishable               the trials a leaderboard cannot tell apart from the best
    replicate_groups                one config run several times: mean ± spread
    detect_overfitting              val loss rising by more than its noise while train loss falls

Why: the validation split of the quickstart holds 288 images, so one image is 0.35 points of
accuracy; without a noise scale the page ranks ties and flags wiggles.
"""

from __future__ import annotations

import json
import math
from typing import Iterable

from service.core.record import EpochResult, TrialSummary

# Two trials are told apart only when their difference exceeds Z standard errors of it (≈ 95 %).
INDISTINGUISHABLE_Z = 2.0
# The overfitting flag: val loss above its minimum by more than OVERFIT_K standard errors of the
# mean val loss, for OVERFIT_EPOCHS consecutive epochs, while train loss stays below its value there.
OVERFIT_K = 2.0
OVERFIT_EPOCHS = 2

SE_RULE = (
    "Accuracy: binomial standard error SE = sqrt(p (1 − p) / n) with n the images of the split "
    "(val_samples in the record; the test split's size for test accuracy). Loss: the standard error of "
    "the mean cross-entropy, std of the per-image losses / sqrt(n), as the training loop measured it "
    "(val_loss_se). ± in the tables is 1 SE; error bars are ±1 SE (thick) and the 95 % Wilson interval (thin)."
)
INDISTINGUISHABLE_RULE = (
    f"A trial is marked ≈ best (statistically indistinguishable from the best) when its objective is within "
    f"{INDISTINGUISHABLE_Z:g} SE of the difference from the best trial's: |x − x_best| ≤ {INDISTINGUISHABLE_Z:g} · "
    f"sqrt(SE² + SE_best²), both at their best epoch. The two estimates come from the same validation images, "
    f"which this treats as independent samples: that overstates the difference's SE, so the rule calls a "
    f"difference real only when it is clear (it errs towards 'tie')."
)


# ============================================================================= standard errors
def binomial_se(p: float, n: int) -> float:
    """The standard error of an accuracy ``p`` measured on ``n`` independent images: sqrt(p(1−p)/n)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return math.sqrt(max(0.0, p * (1.0 - p)) / n)


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of an accuracy (stays inside [0, 1] and is not zero-width at p = 1,
    where the plain SE says 0)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def metric_se(entry: EpochResult | None, metric: str) -> float | None:
    """The standard error of ``entry``'s ``metric``, when the record holds what it needs:
    val_acc from val_samples (binomial), val_loss from val_loss_se. Train metrics get none: they
    are means over an epoch of a changing model on augmented batches, not one sample of a fixed
    model, so no binomial SE describes them."""
    if entry is None:
        return None
    value = entry.metric(metric)
    if value is None:
        return None
    if metric == "val_acc" and entry.val_samples:
        return binomial_se(value, entry.val_samples)
    if metric == "val_loss":
        return entry.metric("val_loss_se")
    return None


# ============================================================================= the leaderboard
def indistinguishable(rows: list[dict], mode: str, z: float = INDISTINGUISHABLE_Z) -> dict:
    """Which trials cannot be told apart from the best. ``rows``: ``{"trial_id", "value", "se"}``,
    best first (``value``: the objective at the trial's best epoch, ``se``: its standard error).

    Returns ``{"best", "z", "members": [ids, the best included], "trials": {id: {"diff",
    "se_diff", "z_score", "tie"}}, "note"}``; ``members`` is None when the best trial's SE is
    unknown (a record without val_samples/val_loss_se): then nothing can be claimed either way.
    """
    result = {"best": None, "z": z, "members": None, "trials": {}, "note": None}
    if not rows:
        return result
    best = rows[0]
    result["best"] = best["trial_id"]
    if best.get("se") is None:
        result["note"] = "the record holds no standard error for this objective (no val_samples / val_loss_se)"
        return result
    members = []
    for row in rows:
        se = row.get("se")
        if se is None:
            result["trials"][row["trial_id"]] = {"diff": None, "se_diff": None, "z_score": None, "tie": None}
            continue
        diff = abs(row["value"] - best["value"])
        se_diff = math.sqrt(se * se + best["se"] ** 2)
        tie = diff <= z * se_diff
        result["trials"][row["trial_id"]] = {
            "diff": diff, "se_diff": se_diff, "z_score": diff / se_diff if se_diff > 0 else (0.0 if diff == 0 else None),
            "tie": tie}
        if tie:
            members.append(row["trial_id"])
    result["members"] = members
    return result


def replicate_groups(trials: Iterable[TrialSummary], metric: str) -> list[dict]:
    """Configs that ran more than once (``search.num_samples`` > 1 on a grid): the mean, sample
    standard deviation and range of their best objective over the repeats, best mean first."""
    groups: dict[str, list[TrialSummary]] = {}
    for t in trials:
        if t.best is not None and t.best.metric(metric) is not None:
            groups.setdefault(json.dumps(t.config, sort_keys=True, default=str), []).append(t)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        values = [t.best.metric(metric) for t in members]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        out.append({"config": dict(members[0].config), "trial_ids": [t.trial_id for t in members],
                    "n": len(values), "mean": mean, "std": std, "min": min(values), "max": max(values)})
    return sorted(out, key=lambda g: -g["mean"])


# ============================================================================= overfitting
def detect_overfitting(history: list[EpochResult], min_epochs: int = OVERFIT_EPOCHS, k: float = OVERFIT_K) -> dict:
    """Flag a trial whose val loss rose above its minimum by more than its noise while the train
    loss kept falling: the model memorises its training images.

    The rule: let m be the epoch of minimum val loss. The trial is flagged when ``min_epochs``
    consecutive epochs e after m each have val_loss[e] − val_loss[m] > k · SE, with SE the larger of
    the two epochs' val_loss_se (the standard error of the mean loss over the split), and
    train_loss[e] < train_loss[m]. A rise within the noise, an isolated spike, a val loss that later
    comes back below its old minimum, or a rise of both losses (a diverging learning rate) is not
    overfitting.

    The rule is conservative: every epoch is scored on the same images, so the noise of a
    difference between two epochs is smaller than the SE of one epoch's mean, which is what the
    record holds (the per-image losses are not kept). A slow drift within that SE is therefore not
    flagged; ``last_rise`` says where the last epoch stands (nats above the minimum, and in SE).

    Returns ``{"overfitting", "min_val_loss_epoch", "start_epoch", "epochs", "rise", "se", "k",
    "min_epochs", "note", "last_rise", "last_rise_in_se"}``: ``start_epoch`` is the first epoch of
    the first qualifying run, ``epochs`` its length, ``rise`` the largest val-loss rise above the
    minimum in it (nats) and ``se`` the noise it was compared with; ``note`` says why a trial could
    not be assessed.
    """
    result = {"overfitting": False, "min_val_loss_epoch": None, "start_epoch": None, "epochs": 0,
              "rise": None, "se": None, "k": k, "min_epochs": min_epochs, "note": None,
              "last_rise": None, "last_rise_in_se": None}
    points = sorted((h for h in history if h.metric("val_loss") is not None and h.metric("train_loss") is not None),
                    key=lambda h: h.epoch)
    if not points:
        result["note"] = "no val and train loss recorded"
        return result
    low = min(points, key=lambda h: (h.val_loss, h.epoch))  # the first epoch of the minimum
    result["min_val_loss_epoch"] = low.epoch
    after = [h for h in points if h.epoch > low.epoch]
    if after and (low.metric("val_loss_se") is None or any(h.metric("val_loss_se") is None for h in after)):
        result["note"] = "the record holds no val_loss_se (a sweep run before it was recorded): not assessed"
        return result
    if after:  # where the last epoch stands, flagged or not: a slow drift the rule does not call overfitting
        last = after[-1]
        result["last_rise"] = last.val_loss - low.val_loss
        scale = max(low.val_loss_se, last.val_loss_se)
        result["last_rise_in_se"] = result["last_rise"] / scale if scale > 0 else None
    run: list[tuple[EpochResult, float, float]] = []  # (epoch, rise, se) of the current run
    for h in after:
        se = max(low.val_loss_se, h.val_loss_se)
        rise = h.val_loss - low.val_loss
        hit = rise > k * se and h.train_loss < low.train_loss
        if run and (not hit or h.epoch != run[-1][0].epoch + 1):  # the run ends (a gap in the history too)
            if len(run) >= min_epochs:
                break
            run = []
        if hit:
            run.append((h, rise, se))
    if len(run) >= min_epochs:
        worst = max(run, key=lambda r: r[1])
        result.update(overfitting=True, start_epoch=run[0][0].epoch, epochs=len(run), rise=worst[1], se=worst[2])
    return result
