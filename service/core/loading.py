"""YAML → SweepSpec, with every problem reported at once: dotted path, YAML line, did-you-mean.

    spec = load_spec("sweeps/quickstart.yaml", overrides=["train.epochs=1"])

raises ``SpecError`` (never a pydantic traceback) listing all problems of the file and overrides:
field errors and cross-section ones together, each with a path and/or a line. Any input is read
in bounded time and memory: see the MAX_* limits under "bounded YAML" (bytes, nesting, nodes with
aliases expanded, integer digits, keys, tags), checked while the YAML is parsed.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.core.spec import MAX_LIST_ITEMS, MAX_TRIALS, SpecProblems, SweepSpec, apply_overrides, short_repr
from service.core.spec import _classes_in
from service.core.spec import _section_class as _model_class  # one rule for which spec class a node is


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

    def __init__(self, source: str, problems: list[Problem], *, omitted: int = 0):
        self.source = source
        self.problems = problems
        self.omitted = omitted  # problems found beyond the MAX_PROBLEMS listed
        total = len(problems) + omitted
        count = f"{total:,} problem" + ("s" if total != 1 else "")
        lines = [f"{source}: {count}"] + [f"  {p}" for p in problems]
        if omitted:
            lines.append(f"  ... and {omitted:,} more (fix these first)")
        super().__init__("\n".join(lines))


# ----------------------------------------------------------------------------- bounded YAML
# Limits on what a spec may be, so that reading any input costs bounded time and memory (all of
# them checked while the YAML is parsed, before a Python object is built for what they refuse):
MAX_SPEC_BYTES = 1 << 20  # 1 MiB of YAML: a file, stdin, an API request body, all --set values together
MAX_DEPTH = 64  # nested mappings/lists, aliases expanded (a real spec nests ~5 deep)
MAX_NODES = 50_000  # scalars + mappings + lists, every alias counted as the size of what it repeats
# (a real spec has a few hundred; 50,000 holds five 10,000-value grids and keeps the worst case,
# parsing 50,000 values and pydantic reporting 50,000 errors, well under a second)
MAX_INT_DIGITS = 30  # digits of an integer (Python refuses 4,300; a spec's largest is a 10-digit seed)
MAX_KEY_CHARS = 256  # a mapping key (the longest real ones are PBT mutation paths, ~40)
MAX_PROBLEMS = 100  # problems listed in one SpecError; the count says how many more there were
# Tags a spec may write explicitly: the plain YAML scalars, lists and mappings (no !!python/...,
# !!binary, !!timestamp, !!set, !custom). Unquoted dates stay strings (no implicit timestamps).
_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_MERGE = "tag:yaml.org,2002:merge"
_Events = getattr(yaml, "CBaseLoader", yaml.BaseLoader)  # libyaml's event parser when PyYAML has it


class _Resolver(yaml.resolver.Resolver):
    """YAML 1.1's implicit types minus timestamps and the '=' value tag: those stay strings."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers
                if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")]
        for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
    }


class _Refused(Exception):
    def __init__(self, message: str, mark=None, path: tuple = ()):
        super().__init__(message)
        self.message, self.path = message, path
        self.line = mark.line + 1 if mark is not None else None


class _Frame:
    __slots__ = ("kind", "value", "path", "anchor", "start", "height", "key", "key_line", "merges", "line")

    def __init__(self, kind, value, path, anchor, start, line):
        self.kind, self.value, self.path, self.anchor, self.start, self.line = kind, value, path, anchor, start, line
        self.height, self.key, self.key_line, self.merges = 0, _NO_KEY, None, []


_NO_KEY = object()
_SCALARS = yaml.constructor.SafeConstructor()
_RESOLVE = _Resolver()


def decode_spec(data: bytes, source: str) -> str:
    """Spec bytes as text: at most MAX_SPEC_BYTES, UTF-8 (a clear error at the first bad byte)."""
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(source, [Problem("", f"the spec is larger than {MAX_SPEC_BYTES:,} bytes (1 MiB), the most a spec may be", 1)])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise SpecError(source, [Problem("", (
            f"not UTF-8 text: byte 0x{data[err.start]:02x} at byte offset {err.start} (column {column}) "
            "cannot be decoded; save the spec as UTF-8"), line)]) from None
    return text.removeprefix("\ufeff")


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """The document as plain data, plus the 1-based line of every key / list item by path.
    Bounded: see the MAX_* limits above; anything refused is a SpecError with its line."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as err:
        line = text.count("\n", 0, err.start) + 1
        raise SpecError(source, [Problem("", f"not valid Unicode text: character {err.start} is a lone surrogate", line)]) from None
    if size > MAX_SPEC_BYTES:
        raise SpecError(source, [Problem("", f"the spec is {size:,} bytes: at most {MAX_SPEC_BYTES:,} (1 MiB)", 1)])
    lines: dict[tuple, int] = {}
    duplicates: list[Problem] = []
    try:
        data = _build(text, lines, duplicates)
    except _Refused as err:
        raise SpecError(source, [Problem(_dotted(err.path), err.message, err.line or _line(err.path, lines) or 1)]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        if mark is not None:
            line = mark.line + 1
        else:  # a ReaderError: a character YAML does not allow, at a position
            line = text.count("\n", 0, max(0, getattr(err, "position", 0))) + 1
        what = getattr(err, "problem", None) or getattr(err, "reason", None) or str(err).splitlines()[0]
        raise SpecError(source, [Problem("", f"not valid YAML: {what}", line)]) from None
    if duplicates:
        raise SpecError(source, duplicates[:MAX_PROBLEMS], omitted=max(0, len(duplicates) - MAX_PROBLEMS))
    return data, lines


def _build(text: str, lines: dict[tuple, int], duplicates: list[Problem]) -> Any:
    """Python data from the YAML event stream, checking every limit as the events arrive (an
    alias adds the size of what it repeats to the node count, so an alias bomb stops at once)."""
    parser = _Events(text)
    try:
        return _from_events(parser, lines, duplicates)
    finally:
        parser.dispose()


def _from_events(parser, lines: dict[tuple, int], duplicates: list[Problem]) -> Any:
    stack: list[_Frame] = []
    anchors: dict[str, tuple[Any, int, int, bool]] = {}  # name -> (value, nodes, height, is a collection)
    open_anchors: set[str] = set()
    nodes = 0
    root: Any = None
    documents = 0
    events = yaml.events

    def here(mark) -> tuple:
        """The path of the node that starts now (its key or index in the enclosing collection)."""
        if not stack:
            return ()
        top = stack[-1]
        if top.kind == "seq":
            return top.path + (len(top.value),)
        return top.path + (top.key,) if top.key is not _NO_KEY else top.path

    def at_key() -> bool:
        return bool(stack) and stack[-1].kind == "map" and stack[-1].key is _NO_KEY

    def add(value: Any, height: int, mark, is_collection: bool) -> None:
        nonlocal root
        if not stack:
            root = value
            return
        top = stack[-1]
        top.height = max(top.height, height)
        if top.kind == "seq":
            if len(top.value) >= MAX_LIST_ITEMS:
                raise _Refused(f"a list of more than {MAX_LIST_ITEMS:,} items: at most {MAX_LIST_ITEMS:,}", mark, top.path)
            lines[top.path + (len(top.value),)] = mark.line + 1
            top.value.append(value)
        elif top.key is _NO_KEY:  # a key
            if is_collection:
                raise _Refused("a mapping key must be a plain value (a name), not a list or a mapping", mark, top.path)
            if isinstance(value, str) and len(value) > MAX_KEY_CHARS:
                raise _Refused(f"a key of {len(value):,} characters: at most {MAX_KEY_CHARS}", mark, top.path)
            top.key, top.key_line = value, mark.line + 1
        else:  # the value of the pending key
            key, top.key = top.key, _NO_KEY
            if key is _MERGE_KEY:
                top.merges.append((value, top.key_line))
            elif key in top.value:
                duplicates.append(Problem(_dotted(top.path + (key,)), "key appears twice", top.key_line))
            else:
                top.value[key] = value
                lines[top.path + (key,)] = top.key_line

    def count(extra: int, mark) -> None:
        nonlocal nodes
        nodes += extra
        if nodes > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES:,} values (aliases counted as what they repeat): a spec "
                           "this large is refused before it is built", mark, here(mark))

    plain: dict[str, Any] = {}  # plain scalars already read: a value repeated is resolved once
    scalar_event, get_event = events.ScalarEvent, parser.get_event
    while (event := get_event()) is not None:
        kind = type(event)
        if kind is scalar_event:
            nodes += 1
            if nodes > MAX_NODES:
                count(0, event.start_mark)
            value = event.value
            plain_scalar = event.tag is None and event.implicit[0]
            top = stack[-1] if stack else None
            if plain_scalar and value in plain:
                value = plain[value]
            else:
                try:
                    value = _scalar(event, top is not None and top.kind == "map" and top.key is _NO_KEY)
                except _Refused as err:
                    err.path = here(event.start_mark)
                    raise
                if plain_scalar and value is not _MERGE_KEY:
                    plain[event.value] = value
            if event.anchor is not None:
                anchors[event.anchor] = (value, 1, 0, False)
            # add(), inlined for the common cases: a list item, a plain key, a key's value
            if top is None:
                add(value, 0, event.start_mark, False)
            elif top.kind == "seq":
                if len(top.value) >= MAX_LIST_ITEMS:
                    add(value, 0, event.start_mark, False)  # refuses
                lines[top.path + (len(top.value),)] = event.start_mark.line + 1
                top.value.append(value)
            elif top.key is _NO_KEY and value.__class__ is str and len(value) <= MAX_KEY_CHARS:
                top.key, top.key_line = value, event.start_mark.line + 1
            elif top.key is not _NO_KEY and top.key is not _MERGE_KEY and top.key not in top.value:
                top.value[top.key] = value
                lines[top.path + (top.key,)] = top.key_line
                top.key = _NO_KEY
            else:
                add(value, 0, event.start_mark, False)
        elif kind is events.SequenceStartEvent or kind is events.MappingStartEvent:
            mark = event.start_mark
            path = here(mark)
            if at_key():
                raise _Refused("a mapping key must be a plain value (a name), not a list or a mapping", mark, path)
            tag = event.tag
            seq = kind is events.SequenceStartEvent
            if tag not in (None, "!") and tag != f"tag:yaml.org,2002:{'seq' if seq else 'map'}":
                raise _Refused(_tag_refused(tag), mark, path)
            count(1, mark)
            if len(stack) >= MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", mark, path)
            frame = _Frame("seq" if seq else "map", [] if seq else {}, path, event.anchor, nodes, mark)
            if event.anchor is not None:
                open_anchors.add(event.anchor)
            stack.append(frame)
        elif kind is events.SequenceEndEvent or kind is events.MappingEndEvent:
            frame = stack.pop()
            if frame.merges:
                _merge(frame, lines)
            height = frame.height + 1
            if frame.anchor is not None:
                open_anchors.discard(frame.anchor)
                anchors[frame.anchor] = (frame.value, nodes - frame.start + 1, height, True)
            add(frame.value, height, frame.line, True)
        elif kind is events.AliasEvent:
            mark = event.start_mark
            if event.anchor in open_anchors:
                raise _Refused(f"the alias *{event.anchor} is inside its own anchor (a recursive structure)", mark, here(mark))
            if event.anchor not in anchors:
                raise _Refused(f"the alias *{event.anchor} names no anchor (&{event.anchor}) written before it", mark, here(mark))
            value, size, height, is_collection = anchors[event.anchor]
            count(size, mark)
            if len(stack) + height > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep (with the alias *{event.anchor} expanded)", mark, here(mark))
            add(value, height, mark, is_collection)
        elif kind is events.DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise _Refused("a spec is one YAML document: this one has a second ('---')", event.start_mark)
    return root


_MERGE_KEY = object()  # the '<<' key: its value's keys are merged into the mapping


def _merge(frame: _Frame, lines: dict[tuple, int]) -> None:
    """YAML merge keys (``<<: *base``, ``<<: [*a, *b]``): keys written in the mapping win, then
    the merged mappings in order."""
    for value, line in frame.merges:
        merged = value if isinstance(value, list) else [value]
        for mapping in merged:
            if not isinstance(mapping, dict):
                raise _Refused("'<<' (a merge key) takes a mapping or a list of mappings", None, frame.path)
            for key, item in mapping.items():
                if key not in frame.value:
                    frame.value[key] = item
                    lines.setdefault(frame.path + (key,), line)


_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]{0,%d})" % (MAX_INT_DIGITS - 1))
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_SPECIAL_WORDS = {"y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false", "False",
                  "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL"}


def _scalar(event, is_key: bool) -> Any:
    """One scalar as Python data: str, int, float, bool or None (a '<<' key: the merge marker)."""
    mark, value, tag = event.start_mark, event.value, event.tag
    if tag is None and event.implicit[0]:  # the common plain scalars, without the resolver
        if _DECIMAL.fullmatch(value):
            return int(value)
        if _WORD.fullmatch(value) and value not in _SPECIAL_WORDS:
            return value
    path = None
    if tag in (None, "!"):
        tag = _RESOLVE.resolve(yaml.ScalarNode, value, event.implicit) if tag is None else "tag:yaml.org,2002:str"
    if tag == _MERGE and is_key and event.anchor is None:
        return _MERGE_KEY
    if tag == _MERGE:
        tag = "tag:yaml.org,2002:str"
    if tag not in _TAGS or tag.endswith((":seq", ":map")):
        raise _Refused(_tag_refused(tag), mark, path)
    kind = tag.rsplit(":", 1)[1]
    if kind == "str":
        return value
    if kind == "int":
        digits = sum(c.isalnum() for c in value.lower().removeprefix("-").removeprefix("+").lstrip("0").removeprefix("x").removeprefix("b").removeprefix("o"))
        if digits > MAX_INT_DIGITS:
            raise _Refused(f"an integer of {digits:,} digits: at most {MAX_INT_DIGITS}", mark, path)
    if kind == "float" and len(value) > 1000:
        raise _Refused(f"a number of {len(value):,} characters: at most 1,000", mark, path)
    try:
        node = yaml.ScalarNode(tag, value, mark, mark)
        return {
            "int": _SCALARS.construct_yaml_int,
            "float": _SCALARS.construct_yaml_float,
            "bool": _SCALARS.construct_yaml_bool,
            "null": _SCALARS.construct_yaml_null,
        }[kind](node)
    except Exception:  # noqa: BLE001 - ValueError, IndexError, KeyError...: PyYAML's for a bad value
        raise _Refused(f"{short_repr(value)} is not a valid !!{kind}", mark, path) from None


def _tag_refused(tag: str) -> str:
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    return (f"the YAML tag {short_repr(shown)} is not allowed: a spec holds plain values (strings, numbers, "
            "booleans, null), lists and mappings")


def _dotted(path: tuple) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


# ----------------------------------------------------------------------------- --set overrides
def parse_overrides(overrides: list[str]) -> tuple[dict[str, Any], list[Problem]]:
    """``a.b=v`` strings → {"a.b": v}; values are YAML scalars/lists, so types come from the schema.
    Each value is read with the spec's limits; together they may hold at most MAX_SPEC_BYTES."""
    values: dict[str, Any] = {}
    problems = []
    if sum(len(item) for item in overrides) > MAX_SPEC_BYTES:
        return values, [Problem("--set", f"the overrides are longer than {MAX_SPEC_BYTES:,} characters together", source="--set")]
    for item in overrides:
        path, sep, raw = item.partition("=")
        path = path.strip()
        if not sep or not path:
            problems.append(Problem(short_repr(item)[1:-1] or "''", "an override must look like key.path=value", source="--set"))
            continue
        if path.count(".") >= MAX_DEPTH or len(path) > MAX_KEY_CHARS * 4:
            problems.append(Problem(short_repr(path)[1:-1], f"an override path of at most {MAX_DEPTH} keys", source="--set"))
            continue
        if "" in path.split("."):
            problems.append(Problem(path, "an override path is keys joined by dots, e.g. train.epochs", source="--set"))
            continue
        if not raw.strip():
            values[path] = ""
            continue
        try:
            value, _ = _parse_yaml(raw, "--set")
        except SpecError as err:
            if err.problems and err.problems[0].message.startswith("not valid YAML"):
                values[path] = raw  # let the schema say what it expected
            else:  # a limit or a refused tag: say so at the override's path
                problems.append(Problem(path, err.problems[0].message, source="--set"))
            continue
        values[path] = value
    return values, problems


# ----------------------------------------------------------------------------- validation
def load_spec(path: str | Path, overrides: list[str] = (), max_trials: int = MAX_TRIALS) -> SweepSpec:
    """Load a spec file; ``-`` reads the YAML from stdin (how a RayJob hands over its spec).
    At most MAX_SPEC_BYTES are read, and the bytes must be UTF-8."""
    if str(path) == "-":
        import sys

        stream = getattr(sys.stdin, "buffer", None)
        raw = stream.read(MAX_SPEC_BYTES + 1) if stream is not None else sys.stdin.read(MAX_SPEC_BYTES + 1).encode()
        text = decode_spec(raw, "<stdin>")
        return parse_spec(text, source="<stdin>", overrides=list(overrides), max_trials=max_trials)
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise SpecError(str(path), [Problem("", f"cannot read the spec file: {err.strerror or err}")]) from None
    return parse_spec(decode_spec(raw, str(path)), source=str(path), overrides=list(overrides), max_trials=max_trials)


def parse_spec(text: str, source: str = "<spec>", overrides: list[str] = (), max_trials: int = MAX_TRIALS) -> SweepSpec:
    """The validated spec, or ``SpecError`` with every problem: the field errors and, checked on
    every section that parsed, the cross-section ones (search vs space, PBT, the trial count), all
    at once. Also refuses more than ``max_trials`` trials (default ``MAX_TRIALS``: what the sweep
    service's API gets). Bounded: see MAX_SPEC_BYTES and the other limits above."""
    data, lines = _parse_yaml(text, source)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise SpecError(source, [Problem("", "the spec must be a mapping of keys (name, data, model, ...)", 1)])
    flat, problems = parse_overrides(list(overrides))
    if flat:
        data = _kinds_switched(data, apply_overrides(data, flat), flat)
    context = {"max_trials": max_trials}
    try:
        spec = SweepSpec.model_validate(data, context=context)
    except ValidationError as err:
        errors = err.errors()
    else:
        if not problems:
            return spec
        raise SpecError(source, problems)
    found, omitted = _all_problems(errors, data, lines, set(flat), context)
    problems += sorted(found, key=lambda p: (p.line is None, p.line or 0))
    if len(problems) > MAX_PROBLEMS:
        omitted += len(problems) - MAX_PROBLEMS
        problems = problems[:MAX_PROBLEMS]
    raise SpecError(source, problems, omitted=omitted)


# Required sections stood in for while a spec with errors there is checked for the rest.
_STAND_INS = {"name": "spec", "data": {"name": "synthetic"}, "model": {"name": "mlp"}}
_REPAIR_ROUNDS = 6
_ERRORS_CHECKED = 2_000  # beyond this many field errors, only they are reported (no cross-section checks)


def _all_problems(errors: list[dict], data: dict, lines: dict, overridden: set[str], context: dict) -> tuple[list[Problem], int]:
    """Every problem, across layers. The field errors come first (pydantic's); then the values that
    failed are set aside (their defaults stand in, or a stand-in for a required section) and the
    rest is validated again, so that the cross-section checks run on whatever parsed. A problem
    found on such a repaired spec is kept only if it read nothing that was set aside (its path,
    ``related`` and ``involves``): a default standing in never causes a problem of its own."""
    found: dict[tuple[str, str], Problem] = {}
    omitted = 0
    current, set_aside, aside = data, [], set()

    def keep(problem: Problem) -> None:
        nonlocal omitted
        if len(found) < MAX_PROBLEMS:
            found.setdefault((problem.path, problem.message), problem)
        elif (problem.path, problem.message) not in found:
            omitted += 1

    if len(errors) > _ERRORS_CHECKED:  # a document mostly wrong: its first problems are enough
        for error in errors[:MAX_PROBLEMS]:
            for problem in _problems(error, data, lines, overridden):
                keep(problem)
        return list(found.values()), omitted + len(errors) - MAX_PROBLEMS
    for round_ in range(_REPAIR_ROUNDS):
        fixes = []
        for error in errors:
            raised = error.get("ctx", {}).get("error")
            if error["type"] == "value_error" and isinstance(raised, SpecProblems):
                base = _data_path(error["loc"], current)
                for at in raised.found:
                    read = [base + at.path] + ([base + at.related] if at.related else []) + [base + p for p in at.involves]
                    if not any(_overlaps(r, s) for r in read for s in set_aside):
                        keep(_located(base + at.path, at.message, lines, overridden, base + at.related if at.related else (),
                                      [base + p for p in at.involves]))
                if base:
                    fixes.append(base)  # a section's own check failed: set the section aside to check the rest
            else:
                if round_ == 0:
                    keep(_problem(error, current, lines, overridden))
                fix = _repair_path(error, current)
                if fix is not None:
                    fixes.append(fix)
        fixes = [f for f in dict.fromkeys(fixes) if f not in aside]
        if not fixes:
            break
        set_aside += fixes
        aside.update(fixes)
        current = _set_aside(current, fixes)
        try:
            SweepSpec.model_validate(current, context=context)
            break
        except ValidationError as err:
            errors = err.errors()
    return list(found.values()), omitted


def _overlaps(a: tuple, b: tuple) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _repair_path(error: dict, data: Any) -> tuple | None:
    """What to set aside for a field error: the unknown key itself, the section missing a required
    key, or the whole field holding the bad value (its default then stands in)."""
    kind = error["type"]
    path = _data_path(error["loc"], data, missing=kind == "missing")
    if kind == "extra_forbidden":
        return path or None
    if kind == "missing":
        if len(path) <= 1:
            return path or None  # a required top-level key: a stand-in takes its place
        path = path[:-1]  # the section that lacks it
    if path[:2] == ("scheduler", "mutations") and len(path) > 2:
        return path[:3]  # one mutation (a dict entry, not a field)
    for n in range(len(path), 0, -1):
        if isinstance(path[n - 1], str) and path[n - 1] in _allowed_keys(path[: n - 1], data):
            return path[:n]
    return path[:1] or None


def _set_aside(data: dict, paths: list[tuple]) -> dict:
    """A copy of ``data`` without ``paths`` (copying only the containers along them), with stand-ins
    for the required sections that are then missing."""
    tree: dict = {}
    for path in paths:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if node is None:
                break
        else:
            node[path[-1]] = None  # None: drop this key/item
    result = _prune(data, tree)
    for key, stand_in in _STAND_INS.items():
        if not isinstance(result, dict):
            break
        if key not in result or (key,) in paths:
            result[key] = stand_in
    return result if isinstance(result, dict) else dict(_STAND_INS)


def _prune(node: Any, tree: dict) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in tree:
                if tree[key] is None:
                    continue
                value = _prune(value, tree[key])
            out[key] = value
        return out
    if isinstance(node, list):
        out = []
        for i, value in enumerate(node):
            if i in tree:
                if tree[i] is None:
                    continue
                value = _prune(value, tree[i])
            out.append(value)
        return out
    return node


def _problems(error: dict, data: Any, lines: dict[tuple, int], overridden: set[str]) -> list[Problem]:
    """One pydantic error as Problems: a validator's ``SpecProblems`` gives one per problem, each at its path."""
    raised = error.get("ctx", {}).get("error")
    if error["type"] == "value_error" and isinstance(raised, SpecProblems):
        base = _data_path(error["loc"], data)
        return [_located(base + at.path, at.message, lines, overridden, base + at.related if at.related else (),
                         [base + p for p in at.involves]) for at in raised.found]
    return [_problem(error, data, lines, overridden)]


def _problem(error: dict, data: Any, lines: dict[tuple, int], overridden: set[str]) -> Problem:
    path = _data_path(error["loc"], data, missing=error["type"] == "missing")
    if error["type"] == "union_tag_invalid" and isinstance(error["input"], dict):
        path += ("name",)  # the discriminator is what is wrong, not the whole section
    return _located(path, _message(error, path, data), lines, overridden)


def _located(path: tuple, message: str, lines: dict[tuple, int], overridden: set[str], related: tuple = (),
             involves: list[tuple] = ()) -> Problem:
    """A Problem at ``path``: its YAML line, or "--set" when an override put the value there.
    A ``related`` place the message names gets its line added after its first mention. A path
    not written in the file (a default) gets the line of the first place the check read that is."""
    dotted = _dotted(path)
    from_set = _overridden(dotted, overridden)
    if related and not _overridden(_dotted(related), overridden) and _line(related, lines) is not None:
        name = _dotted(related)
        message = message.replace(name, f"{name} (line {_line(related, lines)})", 1)
    line = None if from_set else _line(path, lines)
    if line is None and not from_set:
        line = next((_line(p, lines) for p in ([related] if related else []) + list(involves) if _line(p, lines)), None)
        if line is None and any(_overridden(_dotted(p), overridden) for p in involves):
            from_set = True
    return Problem(dotted, message, line, "--set" if from_set else "")


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


# Ray Tune's names for what the spec calls otherwise, where users bring them (section, key) → the
# pointer; None: under any section.
RAY_TUNE_NAMES: dict[tuple[str | None, str], str] = {
    ("scheduler", "max_t"): "this is train.epochs here (every scheduler counts time in epochs)",
    ("scheduler", "time_attr"): "time is always epochs here (train.epochs is the budget)",
    ("scheduler", "metric"): "the metric is the spec's objective.metric (one for the whole sweep)",
    ("scheduler", "mode"): "the mode is the spec's objective.mode",
    ("scheduler", "hyperparam_mutations"): "this is scheduler.mutations here (dotted spec path -> distribution)",
    ("scheduler", "quantile_fraction"): "this is scheduler.quantile here",
    ("scheduler", "grace_period_epochs"): "this is scheduler.grace_period here (epochs)",
    ("search", "metric"): "the metric is the spec's objective.metric",
    ("search", "mode"): "the mode is the spec's objective.mode",
    ("search", "max_concurrent_trials"): "this is resources.max_concurrent_trials here",
    (None, "num_samples"): "this is search.num_samples here (data.num_samples: synthetic images)",
    (None, "metric"): "this is objective.metric here",
    (None, "mode"): "this is objective.mode here",
    (None, "param_space"): "the search space is written in place: a primitive where the value goes (model.filters: {grid: [...]})",
    (None, "config"): "the search space is written in place: a primitive where the value goes (model.filters: {grid: [...]})",
}


def _ray_tune_name(path: tuple) -> str | None:
    key = str(path[-1])
    section = str(path[0]) if len(path) == 2 else None
    if len(path) > 2:
        return None
    return RAY_TUNE_NAMES.get((section, key)) if section else RAY_TUNE_NAMES.get((None, key))


def _message(error: dict, path: tuple, data: Any) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(path[:-1], data)
        if (pointer := _ray_tune_name(path)) is not None:
            return f"unknown key: Ray Tune's {path[-1]!s}? {pointer}"
        if (elsewhere := _kinds_with_key(path)) is not None:
            return elsewhere
        close = difflib.get_close_matches(str(path[-1]), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown key{hint} (allowed: {', '.join(allowed)})" if allowed else f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_not_found":
        names = _kind_names(path)
        return f"needs a name: one of {', '.join(map(repr, names))}" if names else "needs a name"
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        name = error["input"].get("name") if isinstance(error["input"], dict) else error["input"]
        return f"unknown name {short_repr(name)}{_did_you_mean(name, expected)}; expected one of {expected}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "literal_error":
        return f"{msg}, got {short_repr(error['input'])}{_did_you_mean(error['input'], error.get('ctx', {}).get('expected', ''))}"
    return f"{msg}, got {short_repr(error['input'])}" if not isinstance(error.get("input"), (dict, list)) else msg


def _kinds_switched(before: dict, after: dict, flat: dict[str, Any]) -> dict:
    """``--set data.name=synthetic`` on a CIFAR spec asks for another kind of data: the file's keys
    that only the old kind takes (path, download) go with it. A key an override sets stays, and is
    checked against the new kind."""
    for section in UNION_SECTIONS:
        old, new = before.get(section), after.get(section)
        if f"{section}.name" not in flat or not (isinstance(old, dict) and isinstance(new, dict)):
            continue
        if old.get("name") == new.get("name"):
            continue
        kind = _model_class(SweepSpec.model_fields[section].annotation, new)
        if kind is None:  # an unknown name: validation says so
            continue
        overridden = {path.split(".")[1] for path in flat if path.startswith(f"{section}.")}
        after = {**after, section: {k: v for k, v in new.items() if k in kind.model_fields or k in overridden}}
    return after


UNION_SECTIONS = ("data", "model", "scheduler")  # top-level sections that are unions by name


def _section_kinds(section: str) -> list[type]:
    """The classes of a top-level section that is a union by ``name`` (data, model, scheduler)."""
    field = SweepSpec.model_fields.get(section)
    return [c for c in _classes_in(field.annotation) if "name" in c.model_fields] if field else []


def _kind_names(path: tuple) -> list[str]:
    if len(path) != 1:
        return []
    return [n for c in _section_kinds(str(path[0])) for n in typing.get_args(c.model_fields["name"].annotation)]


def _kinds_with_key(path: tuple) -> str | None:
    """data.image_size under data.name: digits → "applies to data.name 'synthetic' only"."""
    if len(path) != 2:
        return None
    section, key = str(path[0]), str(path[1])
    having = [n for c in _section_kinds(section) if key in c.model_fields
              for n in typing.get_args(c.model_fields["name"].annotation)]
    if not having:
        return None
    return f"applies to {section}.name {' or '.join(map(repr, having))} only: remove it here"


def _did_you_mean(value: Any, expected: str) -> str:
    """"; did you mean 'optuna'?" when ``value`` is close to one of the quoted names in ``expected``
    (pydantic's "'grid', 'random', 'optuna' or 'hyperopt'"), the way unknown keys get one."""
    if not isinstance(value, str) or len(value) > MAX_KEY_CHARS:
        return ""
    names = re.findall(r"'([^']*)'", str(expected))
    close = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close and close[0] != value else ""


def _allowed_keys(path: tuple, data: Any) -> list[str]:
    """Field names of the spec class at ``path`` (resolving the model union by its ``name``), also
    inside a grid/choice over whole sections: model.choice[1] is a model, train.optimizer.grid[0]
    an optimizer."""
    cls, node = SweepSpec, data
    members = None  # the annotation of a section whose grid/choice lists its members at `node`
    for key in path:
        if isinstance(key, int):
            node = node[key] if isinstance(node, list) and key < len(node) else None
            if members is not None:
                cls, members = _model_class(members, node), None
                if cls is None:
                    return []
            continue
        if members is not None:  # the grid/choice key itself
            if key not in ("grid", "choice"):
                return []
            node = node.get(key) if isinstance(node, dict) else None
            continue
        field = cls.model_fields.get(key) if cls else None
        node = node.get(key) if isinstance(node, dict) else None
        if field is not None and _lists_sections(node):
            members = field.annotation
            continue
        cls = _model_class(field.annotation, node) if field else None
        if cls is None:
            return []
    return list(cls.model_fields) if cls and members is None else []


def _lists_sections(node: Any) -> bool:
    """``{grid: [...]}`` or ``{choice: [...]}`` listing whole sections (mappings): model, train.optimizer."""
    if not (isinstance(node, dict) and len(node) == 1):
        return False
    (key, members), = node.items()
    return key in ("grid", "choice") and isinstance(members, list) and any(isinstance(m, dict) for m in members)


