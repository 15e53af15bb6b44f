"""YAML → SweepSpec, with every problem reported at once: dotted path, YAML line, did-you-mean.

    spec = load_spec("sweeps/quickstart.yaml", overrides=["train.epochs=1"])

raises ``SpecError`` (never a pydantic traceback) listing all problems of the file and overrides.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from service.core.spec import MAX_TRIALS, SpecProblems, SweepSpec, apply_overrides, trial_count_problem


@dataclass(frozen=True)
class Problem:
    path: str  # dotted, with [i] for list items; "" for the whole document
    message: str
    line: int | None = None  # 1-based line in the YAML file
    source: str = ""  # "--set" when the value came from an override

    def __str__(self) -> str:
        where = self.path or "(spec)"
        if self.source:
            where += f" ({self.source})"
        elif self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.message}"


class SpecError(Exception):
    """A spec that cannot run; ``problems`` lists every one found."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        lines = [f"{source}: {count}"] + [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


# ----------------------------------------------------------------------------- YAML with lines
def _parse_yaml(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """The document as plain data, plus the 1-based line of every key / list item by path."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise SpecError(source, [Problem("", f"not valid YAML: {getattr(err, 'problem', err)}", line)])
    lines: dict[tuple, int] = {}
    duplicates: list[Problem] = []

    def walk(node, path: tuple):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    duplicates.append(
                        Problem(_dotted(path + (key,)), "key appears twice", key_node.start_mark.line + 1)
                    )
                seen.add(key)
                lines[path + (key,)] = key_node.start_mark.line + 1
                walk(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    if root is not None:
        walk(root, ())
    if duplicates:
        raise SpecError(source, duplicates)
    data = yaml.safe_load(text)
    return ({} if data is None else data), lines


def _dotted(path: tuple) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


# ----------------------------------------------------------------------------- --set overrides
def parse_overrides(overrides: list[str]) -> tuple[dict[str, Any], list[Problem]]:
    """``a.b=v`` strings → {"a.b": v}; values are YAML scalars/lists, so types come from the schema."""
    values: dict[str, Any] = {}
    problems = []
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            problems.append(Problem(item, "an override must look like key.path=value", source="--set"))
            continue
        try:
            values[path.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            values[path.strip()] = raw  # let the schema say what it expected
    return values, problems


# ----------------------------------------------------------------------------- validation
def load_spec(path: str | Path, overrides: list[str] = (), max_trials: int = MAX_TRIALS) -> SweepSpec:
    """Load a spec file; ``-`` reads the YAML from stdin (how a RayJob hands over its spec)."""
    if str(path) == "-":
        import sys

        return parse_spec(sys.stdin.read(), source="<stdin>", overrides=list(overrides), max_trials=max_trials)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(str(path), [Problem("", f"cannot read the spec file: {err.strerror}")])
    return parse_spec(text, source=str(path), overrides=list(overrides), max_trials=max_trials)


def parse_spec(text: str, source: str = "<spec>", overrides: list[str] = (), max_trials: int = MAX_TRIALS) -> SweepSpec:
    """The validated spec, or ``SpecError`` with every problem. Also refuses more than
    ``max_trials`` trials (default ``MAX_TRIALS``: what the sweep service's API gets)."""
    data, lines = _parse_yaml(text, source)
    if not isinstance(data, dict):
        raise SpecError(source, [Problem("", "the spec must be a mapping of keys (name, data, model, ...)", 1)])
    flat, problems = parse_overrides(list(overrides))
    data = apply_overrides(data, flat)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        found = [p for e in err.errors() for p in _problems(e, data, lines, set(flat))]
        problems += sorted(found, key=lambda p: (p.line is None, p.line or 0))
    else:
        too_many = trial_count_problem(spec, max_trials)
        if too_many is not None:
            problems.append(_located(too_many.path, too_many.message, lines, set(flat)))
    if problems:
        raise SpecError(source, problems)
    return spec


def _problems(error: dict, data: Any, lines: dict[tuple, int], overridden: set[str]) -> list[Problem]:
    """One pydantic error as Problems: a validator's ``SpecProblems`` gives one per problem, each at its path."""
    raised = error.get("ctx", {}).get("error")
    if error["type"] == "value_error" and isinstance(raised, SpecProblems):
        base = _data_path(error["loc"], data)
        return [_located(base + at.path, at.message, lines, overridden, at.related) for at in raised.found]
    return [_problem(error, data, lines, overridden)]


def _problem(error: dict, data: Any, lines: dict[tuple, int], overridden: set[str]) -> Problem:
    path = _data_path(error["loc"], data, missing=error["type"] == "missing")
    if error["type"] == "union_tag_invalid" and isinstance(error["input"], dict):
        path += ("name",)  # the discriminator is what is wrong, not the whole section
    return _located(path, _message(error, path, data), lines, overridden)


def _located(path: tuple, message: str, lines: dict[tuple, int], overridden: set[str], related: tuple = ()) -> Problem:
    """A Problem at ``path``: its YAML line, or "--set" when an override put the value there.
    A ``related`` place the message names gets its line added after its first mention."""
    dotted = _dotted(path)
    from_set = _overridden(dotted, overridden)
    if related and not _overridden(_dotted(related), overridden) and _line(related, lines) is not None:
        name = _dotted(related)
        message = message.replace(name, f"{name} (line {_line(related, lines)})", 1)
    return Problem(dotted, message, None if from_set else _line(path, lines), "--set" if from_set else "")


def _overridden(dotted: str, overridden: set[str]) -> bool:
    return any(dotted == o or dotted.startswith(o + ".") or dotted.startswith(o + "[") for o in overridden)


def _line(path: tuple, lines: dict[tuple, int]) -> int | None:
    """The line of ``path``, else of its nearest ancestor written in the file."""
    return next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), None)


def _data_path(loc: tuple, data: Any, missing: bool = False) -> tuple:
    """Drop pydantic's union tags (e.g. 'cnn', 'value') from a loc by following the input data."""
    path, node = [], data
    for i, key in enumerate(loc):
        if isinstance(node, dict) and key in node or isinstance(node, list) and isinstance(key, int):
            path.append(key)
            node = node[key] if isinstance(node, dict) or key < len(node) else None
        elif missing and i == len(loc) - 1:
            path.append(key)  # the key that should have been there
        # anything else is a tag naming a union member: not part of the user's document
    return tuple(path)


def _message(error: dict, path: tuple, data: Any) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(path[:-1], data)
        close = difflib.get_close_matches(str(path[-1]), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown key{hint} (allowed: {', '.join(allowed)})" if allowed else f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        name = error["input"].get("name") if isinstance(error["input"], dict) else error["input"]
        return f"unknown name {name!r}; expected one of {expected}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "literal_error":
        return f"{msg}, got {error['input']!r}"
    return f"{msg}, got {error['input']!r}" if not isinstance(error.get("input"), (dict, list)) else msg


def _allowed_keys(path: tuple, data: Any) -> list[str]:
    """Field names of the spec class at ``path`` (resolving the model union by its ``name``)."""
    cls, node = SweepSpec, data
    for key in path:
        if isinstance(key, int):
            node = node[key] if isinstance(node, list) and key < len(node) else None
            continue
        field = cls.model_fields.get(key) if cls else None
        node = node.get(key) if isinstance(node, dict) else None
        cls = _model_class(field.annotation, node) if field else None
        if cls is None:
            return []
    return list(cls.model_fields) if cls else []


def _model_class(annotation, node) -> type[BaseModel] | None:
    """The spec class an annotation stands for, picking a union member by the node's ``name``."""
    candidates = [c for c in _classes_in(annotation) if c.__module__ == "service.core.spec"]
    candidates = [c for c in candidates if not c.__name__.startswith(("Grid", "Choice", "Uniform", "LogUniform", "RandInt", "QUniform"))]
    if len(candidates) == 1:
        return candidates[0]
    name = node.get("name") if isinstance(node, dict) else None
    for cls in candidates:
        literal = cls.model_fields.get("name")
        if literal is not None and name in typing.get_args(literal.annotation):
            return cls
    return None


def _classes_in(annotation) -> list[type]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _classes_in(arg)
    return found
