"""Warm starts (spec ``search.warm_start``): the earlier sweeps a sweep starts from, read from
storage and checked against it. Torch-free: pre-flight (``sweepctl run``/``validate``) and the driver
both call ``load``; trainer/driver/conditional.py hands what it returns to the searchers.

    earlier = load(spec)   # raises WarmStartError (a SpecError: exit 2, no traceback), every problem at once

An earlier sweep is usable when its results answer the same question as this sweep's trials would:
the same seed (so the same validation split), the same data (where the files are aside: data.path,
data.download), the same model and training settings outside the searched parameters, and the same
parameters searched. What may differ: the searched ranges and values (an earlier trial outside this
space is left out, and counted), the search algorithm, the scheduler, resources, storage,
checkpointing, the objectives and constraints (the record holds every metric of every epoch).

Of the earlier trials, those that were evaluated count: ended ``terminated`` or ``stopped_early``
(a scheduler's stop is its result, as the earlier searcher was told), with every objective of this
spec at their last epoch: the value a searcher is told when a trial completes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from service.core import storage
from service.core.loading import Problem, SpecError, parse_spec
from service.core.record import SweepStore, TrialRecord, now_iso
from service.core.spec import SweepSpec, earlier_sweep_location, search_space

EVALUATED = ("terminated", "stopped_early")
COMPARED = ("seed", "data", "model", "train")  # what a result depends on, outside the searched parameters
WHERE_NOT_WHAT = ("data.path", "data.download")  # where the files are, not which


class WarmStartError(SpecError):
    """Earlier sweeps that cannot be read, or answer another question; ``problems`` lists each."""


@dataclass(frozen=True)
class Evaluated:
    """An earlier trial with its result: its config (by dotted spec path, as its record has it) and
    the value of each objective of this spec, in their order, at its last epoch."""

    sweep: str
    storage: str
    trial: TrialRecord
    values: tuple[float, ...]

    @property
    def config(self) -> dict[str, Any]:
        return self.trial.config


@dataclass(frozen=True)
class Earlier:
    name: str
    storage: str
    trials: list[Evaluated]  # the evaluated ones
    not_evaluated: int  # trials that errored, were rejected or never finished, or lack an objective


def load(spec: SweepSpec) -> list[Earlier]:
    """The earlier sweeps of ``spec.search.warm_start`` with their evaluated trials ([] without a
    warm start). Raises ``WarmStartError`` naming each sweep that is missing or incompatible."""
    if spec.search.warm_start is None:
        return []
    found, problems = [], []
    for i, ref in enumerate(spec.search.warm_start.sweeps):
        at = f"search.warm_start.sweeps[{i}]"
        uri, name = earlier_sweep_location(ref, spec.storage.uri)
        store = SweepStore(uri, name)
        try:
            text = storage.read_text(store.spec_uri)
        except FileNotFoundError:
            problems.append(Problem(at, f"no sweep {name!r} in {uri} (looked for {store.spec_uri}): "
                                        "give the NAME of a sweep in this spec's storage, or a sweep's URI (s3://bucket/prefix/NAME, "
                                        "a path ending in NAME)"))
            continue
        except storage.StorageError as err:
            problems.append(Problem(at, f"sweep {name!r} in {uri} cannot be read: {err}"))
            continue
        try:
            earlier_spec = parse_spec(text, source=store.spec_uri, max_trials=None)
        except SpecError as err:
            problems.append(Problem(at, f"the spec of sweep {name!r} ({store.spec_uri}) no longer validates: "
                                        f"{'; '.join(str(p) for p in err.problems[:3])}"))
            continue
        differences = space_differences(spec, earlier_spec)
        if differences:
            problems += [Problem(at, f"{d} (sweep {name!r}): results there answer another question; "
                                     "make the two match or leave that sweep out") for d in differences]
            continue
        index = store.read_index()
        records = store.read_trials(index) if index is not None else []
        evaluated = [e for t in records if (e := _evaluated(spec, name, uri, t)) is not None]
        found.append(Earlier(name, uri, evaluated, len(records) - len(evaluated)))
    if problems:
        raise WarmStartError(f"search.warm_start of {spec.name}", problems)
    return found


def _evaluated(spec: SweepSpec, sweep: str, uri: str, trial: TrialRecord) -> Evaluated | None:
    if trial.status not in EVALUATED or not trial.history:
        return None
    objectives = spec.objectives or [spec.objective]
    values = tuple(trial.history[-1].metric(o.metric) for o in objectives)
    if any(v is None for v in values):
        return None
    return Evaluated(sweep, uri, trial, values)


# ---------------------------------------------------------------------------- compatibility
def space_differences(spec: SweepSpec, earlier: SweepSpec) -> list[str]:
    """What makes an earlier sweep's results answer another question than this spec's trials, one
    line per parameter: a parameter searched in one of them only, a setting fixed to another value."""
    searched_here, searched_there = set(search_space(spec)), set(search_space(earlier))
    lines = []
    here, there = _settings(spec), _settings(earlier)
    for path in sorted(searched_here ^ searched_there):
        if path in searched_here:
            lines.append(f"{path} is searched here but {_fixed(there, path)} there")
        else:
            lines.append(f"{path} is {_fixed(here, path)} here but searched there")
    searched = searched_here | searched_there
    for key in sorted(set(here) | set(there)):
        if _under(key, searched) or key in WHERE_NOT_WHAT:
            continue
        if here.get(key, _UNSET) != there.get(key, _UNSET):
            lines.append(f"{key} is {_shown(here.get(key, _UNSET))} here but {_shown(there.get(key, _UNSET))} there")
    return lines


_UNSET = object()


def _settings(spec: SweepSpec) -> dict[str, Any]:
    """The resolved values of what a result depends on, by dotted path (lists whole)."""
    dumped = spec.model_dump(mode="json")
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else key)
        else:
            out[prefix] = node

    for section in COMPARED:
        walk(dumped.get(section), section)
    return out


def _under(key: str, paths: set[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in paths)


def _fixed(settings: dict[str, Any], path: str) -> str:
    below = {k: v for k, v in settings.items() if k == path or k.startswith(path + ".")}
    if not below:
        return "not set"
    if list(below) == [path]:
        return f"fixed at {_shown(below[path])}"
    return "fixed (" + ", ".join(f"{k[len(path) + 1:]}={_shown(v)}" for k, v in list(below.items())[:6]) + ")"


def _shown(value: Any) -> str:
    if value is _UNSET:
        return "not set"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------- grid/random: copies
def config_key(config: dict[str, Any]) -> str:
    """One string per configuration: equal for the same values, whatever the key order (floats
    compare exactly: both come from JSON, or from the same spec)."""
    return json.dumps(config, sort_keys=True)


def copied_record(evaluated: Evaluated, trial_id: str) -> TrialRecord:
    """The earlier trial as this sweep records it: its results, checkpoints and log where they
    are (in the earlier sweep), marked ``copied_from``."""
    record = evaluated.trial.model_copy(deep=True)
    record.trial_id = trial_id
    record.copied_from = f"{storage.join(evaluated.storage, evaluated.sweep)}#{evaluated.trial.trial_id}"
    record.updated_at = now_iso()
    return record
