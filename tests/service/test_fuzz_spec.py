"""A property-based fuzzer of the spec path: generated specs of every hostile kind go through the
functions `sweepctl validate` calls (load_spec on the file's bytes, parse_spec on the text, and
the CLI's validate in-process). Whatever the input: only a SpecError (or a spec) comes out, every
problem has a path or a line, the CLI exits 0 or 2 without a traceback, and each call takes
under a second. CI-sized (~400 examples, fixed seed, no example database); the big run with
counts per category is bench/fuzz_specs.py (`make fuzz`). No Ray, no torch."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.cli import main as sweepctl
from service.core.loading import MAX_SPEC_BYTES, SpecError, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
SECOND = 1.0

# deadline=None: hypothesis's own deadline would flake on a shared machine's first call; the
# 1 s bound is asserted per call below instead, on this thread's CPU time: the work a spec makes
# the loader do (an alias bomb, a huge list), not the moments a busy 2-core machine gives the test
# process no CPU (a stall of over 1 s once failed a 0.08 s case). bench/fuzz_specs.py reports wall times. derandomize: the same examples on every run.
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])

VALID = [yaml.safe_load((REPO / "sweeps" / name).read_text())
         for name in ("quickstart.yaml", "cnn_pbt.yaml", "cifar10net_optuna.yaml", "model_type.yaml", "cifar10_augmentation.yaml")]
SPEC_KEYS = ["name", "seed", "data", "model", "train", "search", "scheduler", "objective", "resources", "storage",
             "checkpoint", "metrics", "epochs", "filters", "lr", "optimizer", "grid", "choice", "uniform", "loguniform",
             "randint", "quniform", "mutations", "algorithm", "grace_period", "path", "num_samples", "<<"]


@pytest.fixture(scope="module", autouse=True)
def scratch():
    """A folder for the spec files, and a scratch cache for the CLI's crash log (if ever)."""
    with tempfile.TemporaryDirectory() as folder:
        before = os.environ.get("XDG_CACHE_HOME")
        os.environ["XDG_CACHE_HOME"] = folder
        global SCRATCH
        SCRATCH = Path(folder)
        yield
        if before is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = before


SCRATCH = Path(tempfile.gettempdir())


def check(data: bytes | str, overrides: list[str] = ()) -> None:
    """The properties, for one spec: through load_spec, parse_spec and `sweepctl validate`."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    path = SCRATCH / "spec.yaml"
    path.write_bytes(raw)
    calls = [("load_spec", lambda: load_spec(path, list(overrides)))]
    if isinstance(data, str):
        calls.append(("parse_spec", lambda: parse_spec(data, overrides=list(overrides))))
    for name, call in calls:
        start = time.thread_time()
        try:
            call()
        except SpecError as err:
            unlocated = [str(p) for p in err.problems if not p.path and p.line is None]
            assert not unlocated, f"{name}: problems without a path or a line: {unlocated}"
            assert err.problems, f"{name}: a SpecError with no problem"
        took = time.thread_time() - start
        assert took < SECOND, f"{name} took {took:.2f} s"
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.thread_time()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = sweepctl(["validate", str(path), *(f"--set={o}" for o in overrides)])
        except SystemExit as exit_:  # argparse refusing an argument: a usage error
            code = exit_.code
    took = time.thread_time() - start
    assert code in (0, 2), f"sweepctl validate exited {code}: {stderr.getvalue()[-2000:]}"
    assert "Traceback" not in stderr.getvalue() + stdout.getvalue()
    assert took < SECOND, f"sweepctl validate took {took:.2f} s"


def dump(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True, width=120)


def with_value(text: str, index: int, fragment: str) -> str:
    """``fragment`` as the value of the ``index``-th (mod n) key of a block-style spec."""
    lines = text.splitlines()
    spots = [i for i, line in enumerate(lines) if ":" in line and not line.rstrip().endswith(":")] or [None]
    i = spots[index % len(spots)]
    if i is None:
        return text + f"x: {fragment}\n"
    lines[i] = lines[i].split(":", 1)[0] + ": " + fragment
    return "\n".join(lines) + "\n"


def bomb(levels: int, width: int, merge: bool = False) -> str:
    out = ["l0: &l0 [" + ",".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        refs = ",".join([f"*l{i - 1}"] * width)
        out.append(f"l{i}: &l{i} {{<<: [*l{i - 1}], k{i}: [{refs}]}}" if merge and i > 1 else f"l{i}: &l{i} [{refs}]")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- strategies
scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(), st.text(max_size=20),
    st.sampled_from(["grid", "optna", "asha", "pbt", "cnn", "mlpp", "relu", "off", "on", "2024-01-01", "=", "<<",
                     "s3://", "x\x00y", "a" * 300, "~", "1:30:00", "0o17", "-"]),
)
trees = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(SPEC_KEYS) | st.text(max_size=8), inner, max_size=5), max_leaves=25)
valid_specs = st.sampled_from(VALID).map(lambda spec: yaml.safe_load(yaml.safe_dump(spec)))


@st.composite
def mutated(draw):
    """A real spec with field mistakes and maybe spec-wide ones (the all-at-once path)."""
    spec = draw(valid_specs)
    for _ in range(draw(st.integers(1, 3))):
        node, path = spec, []
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node, key=str)))
            path.append(key)
            if not isinstance(node[key], dict):
                break
            node = node[key]
        target = spec
        for key in path[:-1]:
            target = target[key]
        key = path[-1] if path else draw(st.sampled_from(SPEC_KEYS))
        action = draw(st.sampled_from(["value", "typo", "mapping", "delete"]))
        if action == "value":
            target[key] = draw(trees)
        elif action == "typo" and key in target:
            target[str(key) + draw(st.sampled_from(["s", "x", "_"]))] = target.pop(key)
        elif action == "mapping":
            target[key] = {"a": draw(scalars)}
        else:
            target.pop(key, None)
    wide = draw(st.lists(st.sampled_from([
        {"search": {"algorithm": "optuna"}}, {"search": {"algorithm": "grid"}},
        {"scheduler": {"name": "asha", "grace_period": 999}}, {"checkpoint": {"every": 3, "keep": 1}},
        {"scheduler": {"name": "pbt", "perturbation_interval": 2, "mutations": {"model.filters": {"choice": [8, 16]}}}},
        {"resources": {"max_concurrent_trials": 1}}, {"search": {"num_samples": 100_000}},
    ]), max_size=3))
    for change in wide:
        spec.update(change)
    return dump(spec)


@given(st.one_of(trees.map(dump), st.text(max_size=300)), st.lists(st.sampled_from(["train.epochs=1", "name=fz"]), max_size=1))
@FUZZ
def test_random_yaml_structure(text, overrides):
    check(text, overrides)


@given(mutated())
@settings(FUZZ, max_examples=80)
def test_valid_ish_specs_with_mutated_fields(text):
    check(text)


@given(valid_specs.map(dump), st.integers(0, 10**6), st.sampled_from([0x80, 0xC3, 0xE9, 0xFE, 0xFF]), st.binary(max_size=200))
@FUZZ
def test_non_utf8_bytes(text, where, byte, noise):
    raw = text.encode()
    i = where % (len(raw) + 1)
    check(raw[:i] + bytes([byte]) + raw[i:])
    check(noise)
    check(text.encode("utf-16"))


@given(st.integers(60, 300_000), st.sampled_from(["flow-list", "flow-map", "block-map", "block-list"]))
@FUZZ
def test_deep_nesting(depth, kind):
    if kind == "flow-list":
        text = "model: " + "[" * depth + "]" * depth
    elif kind == "flow-map":
        text = "model: " + "{a: " * depth + "1" + "}" * depth
    elif kind == "block-map":
        depth = min(depth, 1400)
        text = "".join(" " * i + "a:\n" for i in range(depth)) + " " * depth + "b: 1\n"
    else:
        text = "x: " + "- " * min(depth, 200_000) + "1\n"
    check(text[:MAX_SPEC_BYTES])


@given(st.integers(2, 14), st.integers(2, 12), st.sampled_from(["bomb", "merge", "chain", "inside-spec", "recursive"]),
       valid_specs.map(dump))
@FUZZ
def test_alias_chains_and_bombs(levels, width, kind, spec):
    if kind == "bomb":
        text = bomb(levels, width)
    elif kind == "merge":
        text = bomb(levels, width, merge=True)
    elif kind == "chain":
        n = levels * width * 50
        text = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, n))
    elif kind == "inside-spec":
        text = with_value(spec, levels * width, "&x [" + ",".join(["1"] * width) + "]") + \
            "".join(f"k{i}: &k{i} [" + ",".join([f"*{'x' if i == 0 else f'k{i - 1}'}"] * width) + "]\n" for i in range(levels))
    else:
        text = ["a: &a [*a]\n", "a: &a {b: *a}\n", "a: *nope\n", "a: &a\n  <<: *a\n", "&a a: *a\n"][levels % 5]
    check(text)


TAGS = ["!!python/object/apply:os.system", "!!python/name:os.system", "!!python/tuple", "!!binary", "!!timestamp",
        "!!set", "!!omap", "!!pairs", "!custom", "!", "!!int", "!!float", "!!bool", "!!null", "!!str", "!!map", "!!seq",
        "!<tag:example.com,2000:x>", "!!merge", "!!value"]


@given(valid_specs.map(dump), st.lists(st.tuples(st.integers(0, 100), st.sampled_from(TAGS),
       st.sampled_from(["abc", "1", "0x1F", "2024-13-45", "maybe", "", "[1]", "{a: 1}", "1" * 40, "1e999", "="])),
       min_size=1, max_size=3))
@FUZZ
def test_yaml_tags(spec, insertions):
    for index, tag, value in insertions:
        spec = with_value(spec, index, f"{tag} {value}")
    check(spec)


@given(valid_specs.map(dump), st.integers(0, 100), st.sampled_from([
    "{[1, 2]: 3}", "{{a: 1}: 2}", "{? [a]: 1}", "{null: 1}", "{1: 2}", "{.nan: 1, .nan: 2}", "{true: 1, 1: 2}",
    "{'': 1}", "{" + "k" * 300 + ": 1}"]), st.booleans())
@FUZZ
def test_complex_keys(spec, index, fragment, block_key):
    check(("? [a, b]\n: 1\n" if block_key else "") + with_value(spec, index, fragment))


@given(valid_specs.map(dump), st.integers(0, 100), st.integers(25, 900_000),
       st.sampled_from(["", "-", "0x", "0b", "0o", "0", "+"]), st.sampled_from(["", ".5", ":30", "e5", "_"]))
@FUZZ
def test_huge_ints(spec, index, digits, prefix, suffix):
    check(with_value(spec, index, prefix + "1" * digits + suffix)[:MAX_SPEC_BYTES + 1])


@given(valid_specs, st.sampled_from([{"a": 1}, [1, 2], [], {}, None, "x", True, [{"a": 1}, 2]]),
       st.sampled_from([("model", "dropout", "uniform"), ("train", "optimizer", "lr", "loguniform"),
                        ("train", "optimizer", "lr", "quniform"), ("train", "epochs"), ("seed",),
                        ("scheduler", "grace_period"), ("search", "num_samples")]), st.booleans())
@FUZZ
def test_mappings_where_numbers_go(spec, junk, where, in_mutation):
    node = spec
    for key in where[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[where[-1]] = [junk, 2] if where[-1] in ("uniform", "loguniform") else [junk, 1, junk] if where[-1] == "quniform" else junk
    if in_mutation:
        spec.update(scheduler={"name": "pbt", "mutations": {"model.dropout": {where[-1] if where[-1] in (
            "uniform", "loguniform", "quniform") else "uniform": [junk, junk, junk][: 3 if where[-1] == "quniform" else 2]}}},
            checkpoint={"keep": None}, search={"algorithm": "random"})
    check(dump(spec))


@given(st.sampled_from([100, 9_999, 10_001, 60_000, 150_000]), st.sampled_from(["pbt-choice", "grid", "choice", "junk"]),
       st.integers(0, 10**6))
@settings(FUZZ, max_examples=12)
def test_long_lists(n, kind, bad_at):
    values = [f"{0.05 + i * 1e-6:.6f}" for i in range(n)]
    values[bad_at % n] = "x"
    listed = "[" + ", ".join(values) + "]"
    base = "name: long\ndata: {name: digits}\nmodel: {name: cnn, dropout: 0.1}\ntrain: {epochs: 2}\n"
    if kind == "pbt-choice":
        text = base + f"search: {{algorithm: random}}\ncheckpoint: {{keep: null}}\nscheduler: {{name: pbt, mutations: {{model.dropout: {{choice: {listed}}}}}}}\n"
    elif kind == "junk":
        text = base + f"junk: {listed}\n"
    else:
        text = base.replace("dropout: 0.1", f"dropout: {{{kind}: {listed}}}") + "search: {algorithm: random}\n"
    check(text[: MAX_SPEC_BYTES + 1])


HOSTILE_SETS = ["train.epochs=!!python/object/apply:os.system [id]", "train.epochs=" + "9" * 5000, "model=" + "[" * 1000,
                "a" + ".b" * 1000 + "=1", "=1", "nokey", ".=1", "..=2", "train.epochs={a: 1}", "name=" + "x" * 100_000,
                "search.algorithm=optna", "train.optimizer.lr={loguniform: [{a: 1}, 2]}", "seed=-1", "model.filters=&a [*a]",
                "data.path=a\x00b", "scheduler.mutations={model.dropout: {choice: [0, 1]}}", "model.dropout=2024-13-45",
                "model.dropout=[&a [x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b], "
                "&d [*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e]]",
                "train.epochs=\udcff", "--set", "-x"]


@given(valid_specs.map(dump), st.lists(st.sampled_from(HOSTILE_SETS) | st.text(max_size=40), min_size=1, max_size=4))
@FUZZ
def test_set_overrides(spec, overrides):
    check(spec, overrides)


def test_a_spec_just_over_the_size_limit_and_one_just_under():
    spec = dump(VALID[0]).encode()
    check(spec + b"#" + b"x" * MAX_SPEC_BYTES)
    check(spec + b"#" + b"x" * (MAX_SPEC_BYTES - len(spec) - 10))
    check(b"".join(f"k{i}: {i}\n".encode() for i in range(120_000))[:MAX_SPEC_BYTES])
