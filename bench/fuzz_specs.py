"""Hostile specs through the functions `sweepctl validate` calls: does anything but a SpecError
come out, does anything hang or take a second, does every problem say where it is?

    .venv/bin/python bench/fuzz_specs.py [--cases 12000] [--seed 0] [--cli-every 1] [--json PATH]

Each case is one generated spec (bytes, as a file holds them) plus --set overrides, from one of
the categories below (round robin, a fixed seed: the same run every time). Every case goes
through ``service.core.loading.load_spec`` (file → bytes → text → YAML → schema → cross-section
checks) and, in-process, through ``service.cli.main(["validate", FILE, "--set=..."])`` (what the
command runs, pre-flight's local check included), each under a 10 s alarm. Counted per category:

- uncaught: anything other than a SpecError from load_spec, or an exit code other than 0/2 (or a
  "Traceback") from the CLI (its last-resort handler exits 1 for an unexpected exception);
- hangs: a call that the 10 s alarm interrupted;
- over 1 s: cases where either call took longer than a second;
- max and p99 of the per-case time (the slower of the two calls), and problems with neither a path
  nor a line (from load_spec's SpecError).

Exits 1 when any of uncaught, hangs or over-1-s is not zero. No Ray, no torch, no network.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import string
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from service.cli import main as sweepctl  # noqa: E402
from service.core.loading import MAX_SPEC_BYTES, SpecError, load_spec  # noqa: E402

HANG_S = 10.0
SLOW_S = 1.0

# A valid spec of each shape the schema has (the mutators start from these and from sweeps/*.yaml).
VALID = [
    {"name": "fuzz-grid", "data": {"name": "digits", "val_fraction": 0.2},
     "model": {"name": "cnn", "filters": {"grid": [16, 32]}, "kernel_size": 3, "dropout": {"grid": [0.0, 0.25]}},
     "train": {"epochs": 8, "batch_size": 32, "optimizer": {"name": "adam", "lr": {"grid": [3e-4, 1e-3]}}},
     "search": {"algorithm": "grid"}, "scheduler": {"name": "asha", "grace_period": 2, "reduction_factor": 2}},
    {"name": "fuzz-random", "data": {"name": "synthetic", "num_samples": 256, "image_size": 8},
     "model": {"name": "mlp", "hidden_sizes": {"choice": [[64], [128, 64]]}, "dropout": {"uniform": [0.0, 0.5]}},
     "train": {"epochs": 3, "optimizer": {"lr": {"loguniform": [1e-4, 1e-1]}, "momentum": 0.9}},
     "search": {"algorithm": "random", "num_samples": 4}},
    {"name": "fuzz-pbt", "data": {"name": "digits"}, "model": {"name": "cnn", "dropout": 0.2},
     "train": {"epochs": 6, "optimizer": {"lr": {"loguniform": [1e-4, 1e-2]}}},
     "search": {"algorithm": "random", "num_samples": 4}, "checkpoint": {"keep": None},
     "scheduler": {"name": "pbt", "perturbation_interval": 2,
                   "mutations": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]},
                                 "model.dropout": {"uniform": [0.1, 0.5]}}}},
    {"name": "fuzz-resnet", "data": {"name": "cifar10", "path": "/nonexistent/cifar", "download": True},
     "model": {"name": "resnet", "depth": {"choice": [18, 34]}, "mode": "frozen", "head": "mlp"},
     "search": {"algorithm": "optuna", "num_samples": 3}, "objective": {"metric": "val_loss"}},
]
for path in sorted((ROOT / "sweeps").glob("*.yaml")):
    VALID.append(yaml.safe_load(path.read_text()))

KEYS = ["name", "seed", "data", "model", "train", "search", "scheduler", "objective", "resources", "storage",
        "checkpoint", "metrics", "filters", "epochs", "lr", "grid", "choice", "uniform", "loguniform", "randint",
        "quniform", "mutations", "algorithm", "grace_period", "path", "num_samples", "optimizer", "<<", "x"]
TAGS = ["!!python/object/apply:os.system", "!!python/name:os.system", "!!python/tuple", "!!binary", "!!timestamp",
        "!!set", "!!omap", "!!pairs", "!custom", "!", "!!int", "!!float", "!!bool", "!!null", "!!str", "!!map",
        "!!seq", "!<tag:example.com,2000:x>", "!!merge", "!!value", "!!yaml"]
TAG_VALUES = ["abc", "1", "0x1F", "2024-13-45", "maybe", "", "[1]", "{a: 1}", "1" * 40, "1e999", ".nan", "=", "<<"]


# ----------------------------------------------------------------------------- building blocks
def dump(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True, width=120)


def random_scalar(rng: random.Random):
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randint(-10**6, 10**6)
    if kind == 1:
        return rng.choice([0, -1, 1, 2**31, 2**32, 2**63, -2**63, 10**29])
    if kind == 2:
        return rng.choice([0.0, -0.5, 1e-300, 1e300, float("inf"), float("-inf"), float("nan"), 0.1])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(12)))
    if kind == 5:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(1, 8)))
    if kind == 6:
        return rng.choice(["grid", "random", "optna", "asha", "pbt", "cnn", "mlpp", "relu", "adam", "off", "on",
                           "yes", "no", "~", "null", "2024-01-01", "1:30:00", "0o17", "0x_1", "=", "<<", "*a", "&a"])
    if kind == 7:
        return "a" * rng.choice([41, 300, 5000, 70000])
    if kind == 8:
        return rng.choice(["s3://", "s3://A", "gs://bucket/x", "file://", "/" * 300, "x\x00y", "a/" + "b" * 300,
                           "~nouser/x", "../../etc", "\ud7ff"])
    if kind == 9:
        return {rng.choice(KEYS): random_scalar(rng)}
    if kind == 10:
        return [random_scalar(rng) for _ in range(rng.randrange(4))]
    return rng.choice(["", " ", "#", "-", "?", ":", "[", "{", "}", "]", ",", "&", "*", "!", "|", ">", "%", "@", "`"])


def random_tree(rng: random.Random, depth: int = 0):
    if depth > rng.randrange(2, 7) or rng.random() < 0.25:
        return random_scalar(rng)
    if rng.random() < 0.6:
        return {rng.choice(KEYS) if rng.random() < 0.7 else str(random_scalar(rng))[:30]: random_tree(rng, depth + 1)
                for _ in range(rng.randrange(5))}
    return [random_tree(rng, depth + 1) for _ in range(rng.randrange(5))]


def leaves(data, path=()):
    """Every (path, value) of a spec dict, sections included."""
    yield path, data
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaves(value, path + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from leaves(value, path + (i,))


def set_at(data, path, value):
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def section(spec: dict, key: str) -> dict:
    if not isinstance(spec.get(key), dict):
        spec[key] = {}
    return spec[key]


def valid(rng: random.Random) -> dict:
    return json.loads(json.dumps(rng.choice(VALID)))  # a deep copy


def insert_text(rng: random.Random, text: str, fragment: str) -> str:
    """``fragment`` as the value of a random key of the (block-style) spec text."""
    lines = text.splitlines()
    spots = [i for i, line in enumerate(lines) if ":" in line and not line.rstrip().endswith(":")]
    if not spots:
        return text + f"\nx: {fragment}\n"
    i = rng.choice(spots)
    key = lines[i].split(":", 1)[0]
    lines[i] = f"{key}: {fragment}"
    return "\n".join(lines) + "\n"


def bomb(levels: int, width: int, merge: bool = False) -> str:
    out = ["l0: &l0 [" + ",".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        if merge:
            out.append(f"l{i}: &l{i} {{<<: [" + ",".join([f"*l{i - 1}"] * 2) + f"], k{i}: [" + ",".join([f"*l{i - 1}"] * width) + "]}")
        else:
            out.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(out) + "\n"


def overrides_for(rng: random.Random) -> list[str]:
    return [rng.choice(["train.epochs=1", "name=fuzz-set", "search.num_samples=2", "model.dropout=0.1"])
            for _ in range(rng.randrange(2))]


# ----------------------------------------------------------------------------- the categories
def cat_random_yaml(rng):
    tree = random_tree(rng)
    if isinstance(tree, dict) and rng.random() < 0.5:
        tree.update({k: v for k, v in valid(rng).items() if rng.random() < 0.5})
    return dump(tree).encode(), overrides_for(rng)


def cat_mutated_fields(rng):
    """A valid spec with 1-3 fields wrong and maybe a cross-section mistake: the all-at-once path."""
    spec = valid(rng)
    for _ in range(rng.randrange(1, 4)):
        spots = [p for p, _ in leaves(spec) if p]
        path = rng.choice(spots)
        action = rng.randrange(5)
        if action == 0:
            set_at(spec, path, random_scalar(rng))
        elif action == 1:  # a typo in the key
            parent = spec
            for key in path[:-1]:
                parent = parent[key]
            if isinstance(parent, dict) and isinstance(path[-1], str) and path[-1]:
                k = path[-1]
                i = rng.randrange(len(k))
                parent[k[:i] + k[i + 1:] + rng.choice("sx")] = parent.pop(k)
        elif action == 2:  # a typo in an enum value
            value = rng.choice(["optna", "gird", "ashaa", "relu6", "adamw2", "cnnn", "val_accc", "stratifed"])
            set_at(spec, path, value)
        elif action == 3:
            set_at(spec, path, {"a": 1})
        else:
            set_at(spec, path, random_tree(rng))
    for _ in range(rng.randrange(3)):  # spec-wide mistakes
        rng.choice([
            lambda: section(spec, "search").update(algorithm=rng.choice(["grid", "optuna", "hyperopt"])),
            lambda: spec.update(scheduler={"name": "asha", "grace_period": 1000}),
            lambda: spec.update(scheduler={"name": "pbt", "perturbation_interval": 3,
                                           "mutations": {"model.filters": {"choice": [8, 16]},
                                                         "train.optimizer.lrr": {"uniform": [0.1, 0.2]}}}),
            lambda: spec.update(checkpoint={"every": 2, "keep": 1}),
            lambda: spec.update(resources={"max_concurrent_trials": 1}),
            lambda: section(spec, "search").update(num_samples=100_000),
        ])()
    return dump(spec).encode(), overrides_for(rng)


def cat_non_utf8(rng):
    data = dump(valid(rng)).encode()
    kind = rng.randrange(4)
    if kind == 0:
        i = rng.randrange(len(data))
        data = data[:i] + bytes([rng.choice([0x80, 0xC3, 0xFF, 0xFE, 0xED])]) + data[i:]
    elif kind == 1:
        data = data.decode().encode("utf-16")
    elif kind == 2:
        data = "name: caf\u00e9\n".encode("latin-1") + data
    else:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    return data, []


def cat_deep_nesting(rng):
    n = rng.choice([65, 100, 1000, 10_000, 100_000, 400_000])
    kind = rng.randrange(4)
    if kind == 0:
        text = "model: " + "[" * n + "]" * n
    elif kind == 1:
        text = "model: " + "{a: " * n + "1" + "}" * n
    elif kind == 2:
        n = min(n, 2000)
        text = "".join(" " * i + "a:\n" for i in range(n)) + " " * n + "b: 1\n"
    else:
        n = min(n, 100_000)
        text = "x: " + "- " * n + "1\n"
    return text.encode()[: MAX_SPEC_BYTES], []


def cat_alias(rng):
    kind = rng.randrange(5)
    if kind == 0:  # the classic billion laughs
        text = bomb(rng.randrange(3, 12), rng.randrange(2, 12))
    elif kind == 1:  # a chain: each alias one deeper
        n = rng.choice([10, 100, 1000, 10_000])
        text = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, n))
    elif kind == 2:  # merge-key bomb
        text = bomb(rng.randrange(3, 10), rng.randrange(2, 6), merge=True)
    elif kind == 3:  # recursive or unknown alias
        text = rng.choice(["a: &a [*a]\n", "a: &a {b: *a}\n", "a: *nope\n", "&a a: *a\n", "a: &a\n  <<: *a\n"])
    else:  # a bomb hidden inside a valid spec
        text = bomb(rng.randrange(4, 10), rng.randrange(4, 10)) + dump(valid(rng))
    return text.encode(), []


def cat_tags(rng):
    text = dump(valid(rng))
    for _ in range(rng.randrange(1, 4)):
        text = insert_text(rng, text, f"{rng.choice(TAGS)} {rng.choice(TAG_VALUES)}")
    return text.encode(), []


def cat_complex_keys(rng):
    text = dump(valid(rng))
    fragment = rng.choice(["{[1, 2]: 3}", "{{a: 1}: 2}", "{? [a]: 1}", "{*x: 1}", "{null: 1}", "{1: 2}", "{.nan: 1, .nan: 2}",
                           "{true: 1, 1: 2}", "{'': 1}", "{" + "k" * 300 + ": 1}"])
    if rng.random() < 0.3:
        text = "? [a, b]\n: 1\n" + text
    return insert_text(rng, text, fragment).encode(), []


def cat_huge_ints(rng):
    digits = rng.choice([29, 30, 31, 100, 4300, 4301, 100_000, 900_000])
    number = rng.choice(["", "-", "+"]) + rng.choice(["", "0x", "0b", "0o", "0"]) + "1" * digits
    number = rng.choice([number, number + ".5", "1" * min(digits, 5000) + ":30", "1e" + "9" * min(digits, 1000), number[:5000] + "_"])
    text = insert_text(rng, dump(valid(rng)), number)
    return text.encode()[: MAX_SPEC_BYTES + rng.choice([0, 1])], []


def cat_mapping_for_number(rng):
    spec = valid(rng)
    junk = rng.choice([{"a": 1}, [1, 2], [], {}, None, "x", True, [{"a": 1}, 2], {"uniform": [0, 1]}])
    where = rng.choice([
        ("model", "dropout", "uniform"), ("train", "optimizer", "lr", "loguniform"), ("train", "epochs"),
        ("search", "num_samples"), ("scheduler", "grace_period"), ("seed",), ("train", "optimizer", "lr", "quniform"),
    ])
    node = spec
    for key in where[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[where[-1]] = [junk, rng.choice([junk, 2, 0.5])] if where[-1] in ("uniform", "loguniform") else (
        [junk, 1, rng.choice([junk, 0])] if where[-1] == "quniform" else junk)
    if rng.random() < 0.5:  # inside PBT mutations, typed Any
        spec.update(scheduler={"name": "pbt", "mutations": {"model.dropout": {rng.choice(["uniform", "loguniform", "quniform", "randint", "choice"]): [junk, junk, junk]}}},
                    checkpoint={"keep": None}, search={"algorithm": "random"})
    return dump(spec).encode(), []


def cat_long_lists(rng):
    n = rng.choice([100, 9_999, 10_000, 10_001, 50_000, 190_000])
    values = ", ".join(rng.choice(["0.1", "0.25", "x", "1", "-1"]) if rng.random() < 0.01 else f"{0.05 + i * 1e-6:.6f}" for i in range(n))
    spec = valid(rng)
    kind = rng.randrange(3)
    if kind == 0:  # a PBT choice list: each value is checked against the spec
        spec.update(scheduler={"name": "pbt", "mutations": {"model.dropout": "__LIST__"}}, checkpoint={"keep": None},
                    search={"algorithm": "random"})
        text = dump(spec).replace("__LIST__", "{choice: [" + values + "]}")
    elif kind == 1:
        spec["model"]["dropout"] = "__LIST__"
        text = dump(spec).replace("__LIST__", "{" + rng.choice(["grid", "choice"]) + ": [" + values + "]}")
    else:
        text = "junk: [" + values + "]\n" + dump(spec)
    return text.encode()[: MAX_SPEC_BYTES + rng.choice([0, 10])], []


def cat_set_overrides(rng):
    hostile = [
        "model.dropout=" + bomb(6, 6).replace("\n", "\n "), "train.epochs=!!python/object/apply:os.system [id]",
        "train.epochs=" + "9" * 5000, "model=" + "[" * 1000, "a" + ".b" * 1000 + "=1", "=1", "nokey", ".=1", "..=2",
        "train.epochs={a: 1}", "model.filters={grid: [" + ",".join(["8"] * 20_000) + "]}", "name=" + "x" * 100_000,
        "search.algorithm=optna", "train.optimizer.lr={loguniform: [{a: 1}, 2]}", "seed=-1", "x=\x00",
        "model.filters=&a [*a]", "data.path=a\x00b", "scheduler.mutations={model.dropout: {choice: [0, 1]}}",
        "train.epochs=" + "1" * 31, "model.dropout=!!binary aGVsbG8=", "model.dropout=2024-13-45", "--set",
        "train.epochs=" + "\udcff",
    ]
    overrides = [rng.choice(hostile) for _ in range(rng.randrange(1, 4))]
    return dump(valid(rng)).encode(), overrides


def cat_size(rng):
    kind = rng.randrange(4)
    if kind == 0:
        data = dump(valid(rng)).encode() + b"#" + b"x" * MAX_SPEC_BYTES  # just over the limit
    elif kind == 1:
        data = dump(valid(rng)).encode() + b"#" + b"x" * (MAX_SPEC_BYTES - 4000)  # just under, all comment
    elif kind == 2:
        data = b"".join(f"k{i}: {i}\n".encode() for i in range(rng.choice([1000, 60_000, 120_000])))[:MAX_SPEC_BYTES]
    else:
        data = ("a: '" + "\\x41" * 200_000 + "'\n").encode()
    return data, []


def cat_random_bytes(rng):
    alphabet = b"[]{}:,-?&*!|>'\"#%@` \n\tab01.~<=\\\x00\x7f\xc3\xa9"
    return bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 400))), []


CATEGORIES = {
    "random_yaml": cat_random_yaml,
    "mutated_fields": cat_mutated_fields,
    "non_utf8": cat_non_utf8,
    "deep_nesting": cat_deep_nesting,
    "alias_bombs": cat_alias,
    "yaml_tags": cat_tags,
    "complex_keys": cat_complex_keys,
    "huge_ints": cat_huge_ints,
    "mapping_for_number": cat_mapping_for_number,
    "long_lists": cat_long_lists,
    "set_overrides": cat_set_overrides,
    "size_limit": cat_size,
    "random_bytes": cat_random_bytes,
}


# ----------------------------------------------------------------------------- running a case
class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def timed(fn) -> tuple[float, object]:
    """(seconds, result or the exception raised), under a HANG_S alarm."""
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    start = time.perf_counter()
    try:
        result = fn()
    except BaseException as err:  # noqa: BLE001 - what came out is what we count
        result = err
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return time.perf_counter() - start, result


def run_case(data: bytes, overrides: list[str], folder: Path, cli: bool) -> dict:
    path = folder / "spec.yaml"
    path.write_bytes(data)
    out = {"uncaught": [], "hang": False, "slow": False, "seconds": 0.0, "problems": 0, "unlocated": []}
    seconds, result = timed(lambda: load_spec(path, overrides))
    out["seconds"] = max(out["seconds"], seconds)
    if isinstance(result, Hang):
        out["hang"] = True
    elif isinstance(result, SpecError):
        out["problems"] += len(result.problems)
        out["unlocated"] += [str(p) for p in result.problems if not p.path and p.line is None]
    elif isinstance(result, BaseException):
        out["uncaught"].append(f"load_spec: {type(result).__name__}: {str(result)[:200]}")
    out["slow"] |= seconds > SLOW_S
    if cli:
        stdout, stderr = io.StringIO(), io.StringIO()

        def validate():
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    return sweepctl(["validate", str(path), *(f"--set={o}" for o in overrides)])
                except SystemExit as exit_:  # argparse refusing an argument: a usage error, exit 2
                    return exit_.code

        seconds, result = timed(validate)
        out["seconds"] = max(out["seconds"], seconds)
        out["slow"] |= seconds > SLOW_S
        if isinstance(result, Hang):
            out["hang"] = True
        elif isinstance(result, BaseException):
            out["uncaught"].append(f"cli: {type(result).__name__}: {str(result)[:200]}")
        elif result not in (0, 2) or "Traceback" in stderr.getvalue():
            out["uncaught"].append(f"cli: exit {result}: {stderr.getvalue().strip()[:300]}")
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=12_000, help="specs to generate (default 12,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cli-every", type=int, default=1, metavar="N",
                        help="also run the CLI's validate on every Nth case (default 1: all)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--show", type=int, default=5, help="examples of each failure to print (default 5)")
    args = parser.parse_args(argv)

    # The CLI's crash log goes to a scratch cache, not the user's.
    scratch = tempfile.mkdtemp(prefix="fuzz-specs-")
    os.environ["XDG_CACHE_HOME"] = scratch
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    names = list(CATEGORIES)
    stats = {name: {"cases": 0, "uncaught": 0, "hangs": 0, "over_1s": 0, "times": [], "problems": 0, "unlocated": 0}
             for name in names}
    examples: dict[str, list[str]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.cases):
            name = names[i % len(names)]
            data, overrides = CATEGORIES[name](random.Random(rng.random()))
            result = run_case(data, overrides, Path(folder), cli=i % args.cli_every == 0)
            s = stats[name]
            s["cases"] += 1
            s["uncaught"] += bool(result["uncaught"])
            s["hangs"] += result["hang"]
            s["over_1s"] += result["slow"]
            s["times"].append(result["seconds"])
            s["problems"] += result["problems"]
            s["unlocated"] += len(result["unlocated"])
            for kind, items in (("uncaught", result["uncaught"]), ("unlocated", result["unlocated"]),
                                ("hang", ["hang"] if result["hang"] else []), ("slow", [f"{result['seconds']:.2f} s"] if result["slow"] else [])):
                for item in items:
                    shown = examples.setdefault(f"{name}/{kind}", [])
                    if len(shown) < args.show:
                        shown.append(f"case {i}: {item}  [input {data[:80]!r}... {len(data):,} bytes, --set {[o[:60] for o in overrides]}]")
    wall = time.perf_counter() - start

    header = f"{'category':<20}{'cases':>7}{'uncaught':>10}{'hangs':>7}{'>1 s':>6}{'max s':>8}{'p99 s':>8}{'problems':>10}{'no path/line':>14}"
    print(header)
    print("-" * len(header))
    total = {"cases": 0, "uncaught": 0, "hangs": 0, "over_1s": 0, "times": [], "problems": 0, "unlocated": 0}
    for name in names:
        s = stats[name]
        for key in total:
            total[key] += s[key]
        print(f"{name:<20}{s['cases']:>7}{s['uncaught']:>10}{s['hangs']:>7}{s['over_1s']:>6}{max(s['times'], default=0):>8.3f}"
              f"{p99(s['times']):>8.3f}{s['problems']:>10}{s['unlocated']:>14}")
    print("-" * len(header))
    print(f"{'all':<20}{total['cases']:>7}{total['uncaught']:>10}{total['hangs']:>7}{total['over_1s']:>6}"
          f"{max(total['times'], default=0):>8.3f}{p99(total['times']):>8.3f}{total['problems']:>10}{total['unlocated']:>14}")
    print(f"\n{total['cases']:,} specs in {wall:.0f} s (seed {args.seed}; per case: load_spec"
          f"{' + sweepctl validate in-process' if args.cli_every == 1 else f', and the CLI on every {args.cli_every}th'})")
    for key, shown in examples.items():
        print(f"\n{key}:")
        for line in shown:
            print(f"  {line}")
    if args.json:
        figures = {name: {k: v for k, v in s.items() if k != "times"} | {"max_s": max(s["times"], default=0), "p99_s": p99(s["times"])}
                   for name, s in stats.items()}
        Path(args.json).write_text(json.dumps({"seed": args.seed, "cases": total["cases"], "wall_s": wall,
                                               "categories": figures}, indent=2) + "\n")
    return 1 if total["uncaught"] or total["hangs"] or total["over_1s"] else 0


if __name__ == "__main__":
    sys.exit(main())
