"""Hostile and mistaken specs: every one is a SpecError with a place (path and/or line), in well
under a second and bounded memory, through every door a spec comes in (file, --set, the API);
and a spec's problems come all at once, field errors and cross-section ones together. No Ray."""

from __future__ import annotations

import re
import time
import tracemalloc

import pytest
from fastapi.testclient import TestClient

from service.cli import main as sweepctl
from service.core import loading
from service.core.loading import SpecError, load_spec, parse_spec

GOOD = """\
name: hostile
data: {name: digits}
model:
  name: cnn
  filters: {grid: [16, 32]}
train:
  epochs: 4
  optimizer: {lr: 1.0e-3}
search: {algorithm: grid}
"""


def problems(text: str, **kwargs) -> list[loading.Problem]:
    with pytest.raises(SpecError) as err:
        parse_spec(text, **kwargs)
    return err.value.problems


def billion_laughs(size: int, width: int = 9) -> str:
    """The classic alias bomb, padded with a comment to exactly ``size`` bytes: each level lists
    the one before ``width`` times, so n levels expand to width**n scalars."""
    levels = ["a0: &a0 [" + ",".join(["x"] * width) + "]"]
    while True:
        i = len(levels)
        line = f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]"
        if len("\n".join(levels + [line])) + 2 > size:
            break
        levels.append(line)
    text = "\n".join(levels) + "\n"
    return text + "#" * (size - len(text) - 1) + "\n"


def flow_bomb(levels: int, width: int) -> str:
    """The same bomb as one flow list, for a --set value."""
    parts = ["&a0 [" + ",".join(["x"] * width) + "]"]
    parts += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def bounded(fn, seconds: float = 1.0, megabytes: float = 50.0):
    """Run ``fn`` twice: timed (under ``seconds``), then under tracemalloc (which slows Python
    code several times) for its peak allocation (under ``megabytes``). What it raises, raises."""
    start = time.perf_counter()
    try:
        fn()
    except Exception:
        pass
    took = time.perf_counter() - start
    assert took < seconds, f"took {took:.2f} s"
    tracemalloc.start()
    try:
        return fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        assert peak < megabytes, f"peak {peak:.0f} MB"


# ----------------------------------------------------------------------------- all problems at once
def test_one_field_error_and_two_spec_wide_errors_are_reported_together_each_with_its_line():
    text = GOOD.replace("  filters: {grid: [16, 32]}", "  filters: {grid: [16, 32]}\n  kernel_size: three").replace(
        "optimizer: {lr: 1.0e-3}", "optimizer: {lr: {loguniform: [1.0e-4, 1.0e-2]}}"
    ) + "scheduler: {name: asha, grace_period: 6}\n"
    found = {p.path: p for p in problems(text)}
    assert set(found) == {"model.kernel_size", "search.algorithm", "scheduler.grace_period"}, found
    assert found["model.kernel_size"].line == 6 and "valid integer" in found["model.kernel_size"].message
    assert found["search.algorithm"].line == 10 and "['train.optimizer.lr'] are sampled" in found["search.algorithm"].message
    assert found["scheduler.grace_period"].line == 11 and "exceeds train.epochs (4)" in found["scheduler.grace_period"].message
    assert all(p.line is not None for p in found.values())


def test_two_spec_wide_errors_are_both_reported_and_neither_says_spec():
    text = GOOD.replace("optimizer: {lr: 1.0e-3}", "optimizer: {lr: {uniform: [1.0e-4, 1.0e-2]}}") + \
        "scheduler: {name: median, grace_period: 9}\n"
    found = problems(text)
    assert [p.path for p in found] == ["search.algorithm", "scheduler.grace_period"]
    assert all(p.line is not None for p in found) and "(spec)" not in str(SpecError("x", found))


def test_a_spec_wide_error_on_a_default_points_at_the_line_of_what_it_read():
    # search is not written: the grid-vs-sampled problem is at search.algorithm, on the sampled line
    text = GOOD.replace("search: {algorithm: grid}\n", "").replace("filters: {grid: [16, 32]}", "filters: {choice: [16, 32]}")
    (problem,) = problems(text)
    assert problem.path == "search.algorithm" and problem.line == 5


def test_a_default_standing_in_for_a_bad_value_causes_no_problem_of_its_own():
    # train.epochs is wrong; its default (10) must not trigger "grace_period exceeds train.epochs"
    text = GOOD.replace("epochs: 4", "epochs: ten") + "scheduler: {name: asha, grace_period: 6}\n"
    assert [p.path for p in problems(text)] == ["train.epochs"]
    # a bad search.algorithm (default grid standing in) says nothing about sampled values
    text = GOOD.replace("algorithm: grid", "algorithm: optna").replace("{grid: [16, 32]}", "{choice: [16, 32]}")
    (problem,) = problems(text)
    assert problem.path == "search.algorithm" and "did you mean 'optuna'?" in problem.message


def test_section_checks_and_pbt_mutations_come_with_the_field_errors():
    text = GOOD.replace("name: digits", "name: cifar10, val_fraction: 2").replace("algorithm: grid", "algorithm: random") + """\
scheduler:
  name: pbt
  perturbation_interval: 3
  mutations: {model.filters: {choice: [8, 16]}, train.optimizer.lrr: {uniform: [0.1, 0.2]}}
checkpoint: {every: 2}
"""
    found = {p.path: p for p in problems(text)}
    assert {"data.val_fraction", "data.path", "scheduler.perturbation_interval", "scheduler.mutations.model.filters",
            "scheduler.mutations.train.optimizer.lrr", "checkpoint.keep"} <= set(found)
    assert all(p.line is not None for p in found.values()), found


def test_enum_values_get_a_did_you_mean():
    assert "did you mean 'optuna'?" in problems(GOOD.replace("algorithm: grid", "algorithm: optna"))[0].message
    assert "did you mean 'digits'?" in problems(GOOD.replace("name: digits", "name: digitz"))[0].message
    model = problems(GOOD.replace("name: cnn", "name: cnnn"))[0]
    assert model.path == "model.name" and "did you mean 'cnn'?" in model.message


# ----------------------------------------------------------------------------- bounded parsing
@pytest.mark.parametrize("size", [504, 1700])
def test_an_alias_bomb_is_refused_at_once_without_building_it(size):
    text = billion_laughs(size)
    assert len(text.encode()) == size
    with pytest.raises(SpecError) as err:
        bounded(lambda: parse_spec(text))
    (problem,) = err.value.problems
    assert "aliases counted as what they repeat" in problem.message and problem.line is not None


@pytest.mark.parametrize("text, fragment", [
    ("a: " + "[" * 100 + "]" * 100, "nested more than 64 levels"),
    ("a: " + "[" * 400_000 + "]" * 400_000, "nest"),
    ("a0: &a0 [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[x]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n"
     "a1: &a1 [*a0]\n" + "".join(f"a{i}: &a{i} [[[[[[[[[[*a{i - 1}]]]]]]]]]]\n" for i in range(2, 400)), "alias"),
    ("a: &a [*a]\n", "inside its own anchor"),
    ("a: *nope\n", "names no anchor"),
    ("a: !!python/object/apply:os.system [echo hi]\n", "tag '!!python/object/apply:os.system' is not allowed"),
    ("a: !!binary aGVsbG8=\n", "not allowed"),
    ("a: !!timestamp 2024-01-01\n", "not allowed"),
    ("a: !!set {x}\n", "not allowed"),
    ("a: !custom x\n", "not allowed"),
    ("a: !!int abc\n", "not a valid !!int"),
    ("a: !!bool maybe\n", "not a valid !!bool"),
    ("? [a, b]\n: 1\n", "mapping key must be a plain value"),
    ("{[1]: 2}\n", "mapping key must be a plain value"),
    ("a: " + "1" * 5000 + "\n", "an integer of 5,000 digits: at most 30"),
    ("a: 0x" + "f" * 31 + "\n", "at most 30"),
    ("a: [" + ",".join(["1"] * 10_001) + "]\n", "more than 10,000 items"),
    ("a: 1\n---\nb: 2\n", "one YAML document"),
    ("a: '\ud800'\n", "lone surrogate"),
    ("a: \x00\n", "not valid YAML"),
    ("k: " + "x" * 300 + "\n" + ("k" * 300) + ": 1\n", "a key of 300 characters"),
])
def test_hostile_yaml_is_a_located_spec_error_in_bounded_time(text, fragment):
    with pytest.raises(SpecError) as err:
        bounded(lambda: parse_spec(text))
    assert any(fragment in p.message for p in err.value.problems), err.value
    assert all(p.path or p.line is not None for p in err.value.problems)


def test_plain_yaml_still_reads_as_before():
    spec = parse_spec(GOOD.replace("name: hostile", "name: '2024-01-01'") + "seed: 0x10\n")
    assert spec.name == "2024-01-01" and spec.seed == 16
    base = "base: &base {name: cnn, filters: 8}\n"  # merge keys and anchors keep working
    with pytest.raises(SpecError, match="base"):  # (base itself is an unknown key)
        parse_spec(base + GOOD.replace("model:\n  name: cnn\n  filters: {grid: [16, 32]}", "model: {<<: *base, kernel_size: 5}"))
    spec = parse_spec(GOOD.replace("model:\n  name: cnn\n  filters: {grid: [16, 32]}",
                                   "model: &m {name: cnn, filters: 8}").replace("train:", "train:\n  batch_size: 16"))
    assert spec.model.filters == 8 and spec.train.batch_size == 16
    assert parse_spec(GOOD.replace("epochs: 4", "epochs: !!int 4")).train.epochs == 4
    # an unquoted date stays a string (no implicit timestamps): the schema says what it expected
    assert "valid integer" in problems(GOOD.replace("epochs: 4", "epochs: 2024-01-01"))[0].message


def test_a_mapping_where_a_range_bound_goes_is_a_problem_not_a_type_error():
    text = GOOD.replace("algorithm: grid", "algorithm: random").replace("{grid: [16, 32]}", "16") + """\
checkpoint: {keep: null}
scheduler: {name: pbt, mutations: {model.dropout: {uniform: [{a: 1}, 0.5]}, train.optimizer.lr: {quniform: [0.1, 0.2, x]}}}
"""
    found = problems(text)
    assert any("bounds must be numbers" in p.message for p in found) and all(p.line for p in found)


def test_a_long_pbt_choice_list_is_checked_in_milliseconds_and_a_960_kb_one_refused():
    values = ", ".join(f"{0.05 + i * 1e-5:.5f}" for i in range(9_999))
    text = GOOD.replace("algorithm: grid", "algorithm: random").replace("{grid: [16, 32]}", "16") + \
        f"checkpoint: {{keep: null}}\nscheduler: {{name: pbt, mutations: {{model.dropout: {{choice: [{values}, x]}}}}}}\n"
    (problem,) = bounded(lambda: problems(text), seconds=1.0)
    assert problem.path == "scheduler.mutations.model.dropout" and "model.dropout='x'" in problem.message
    huge = text.replace(values, ", ".join(["0.25"] * 150_000))
    assert len(huge) > 900_000
    (problem,) = bounded(lambda: problems(huge), seconds=1.0)
    assert "more than 10,000 items" in problem.message


def test_a_spec_over_1_mib_and_non_utf8_bytes_are_refused_with_the_byte_offset(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(GOOD.encode() + b"#" + b"x" * (1 << 20))
    with pytest.raises(SpecError, match="larger than 1,048,576 bytes"):
        load_spec(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(GOOD.encode() + "# café\n".encode("latin-1"))
    with pytest.raises(SpecError) as err:
        load_spec(latin)
    (problem,) = err.value.problems
    assert problem.line == 10 and f"byte offset {len(GOOD) + 5}" in problem.message and "0xe9" in problem.message


def test_set_overrides_get_the_same_limits_at_their_path():
    found = problems(GOOD, overrides=["train.epochs=" + "9" * 100, "model.filters=!!python/name:os.system",
                                      "model.dropout=" + flow_bomb(9, 9), "a..b=1",
                                      "x" + ".y" * 100 + "=1"])
    assert all(p.source == "--set" and p.path for p in found), found
    assert [p.path for p in found[:3]] == ["train.epochs", "model.filters", "model.dropout"]


def test_very_many_errors_are_counted_and_the_first_hundred_listed():
    text = GOOD.replace("{grid: [16, 32]}", "{grid: [" + ",".join(["-1"] * 9_999) + "]}")
    with pytest.raises(SpecError) as err:
        bounded(lambda: parse_spec(text))
    assert len(err.value.problems) == 100 and err.value.omitted == 9_899
    assert "9,999 problems" in str(err.value) and "and 9,899 more" in str(err.value)


# ----------------------------------------------------------------------------- the CLI: no traceback
def test_validate_of_hostile_files_is_one_clear_error_and_exit_2(tmp_path, capsys):
    cases = {"latin.yaml": "name: café\n".encode("latin-1"), "bomb.yaml": billion_laughs(1700).encode(),
             "tags.yaml": b"name: !!python/object/apply:os.system [id]\n", "dir": None}
    (tmp_path / "dir").mkdir()
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        assert sweepctl(["validate", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err, err


def test_an_unexpected_exception_is_one_line_pointing_at_a_log_with_the_traceback(tmp_path, monkeypatch, capsys):
    import service.cli as cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def broken(args):
        raise RuntimeError("something no user did")

    monkeypatch.setattr(cli, "cmd_validate", broken)
    assert sweepctl(["validate", "sweeps/quickstart.yaml"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    log = re.search(r"the traceback is in (\S+);", err).group(1)
    assert log.startswith(str(tmp_path / "cache" / "sweep-service"))
    text = open(log).read()
    assert "Traceback (most recent call last)" in text and "something no user did" in text


def test_storage_and_report_errors_are_user_errors(tmp_path, monkeypatch, capsys):
    import service.cli as cli
    from service.core import storage

    def unreachable(args):
        raise storage.StorageError("cannot reach s3://no-such-bucket-here/x: NoSuchBucket")

    monkeypatch.setattr(cli, "cmd_leaderboard", unreachable)
    assert sweepctl(["leaderboard", "x", "--storage", "s3://no-such-bucket-here"]) == 2
    assert "NoSuchBucket" in capsys.readouterr().err


def test_report_before_any_trial_scored_says_so(tmp_path, capsys):
    from service.core.record import Objective, SweepIndex, SweepStore, TrialRecord
    from service.core import storage

    store = SweepStore(str(tmp_path), "early")
    trial = TrialRecord(trial_id="t1", config={"model.filters": 8}, status="running", epochs=0, seconds=0.0, history=[])
    storage.write_text_atomic(store.trial_record_uri("t1"), trial.model_dump_json())
    index = SweepIndex(sweep="early", status="running", objective=Objective(metric="val_acc", mode="max"), max_epochs=2,
                       num_trials=1, trial_states={"running": 1}, started_at="2026-01-01T00:00:00+00:00",
                       updated_at="2026-01-01T00:00:00+00:00", wall_seconds=1.0, trials=[trial.summary()])
    storage.write_text_atomic(store.index_uri, index.model_dump_json())
    assert sweepctl(["report", "early", "--storage", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "has no scored trial yet" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- the API
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(tmp_path):
    from service.control.api import create_app
    from service.control.backends import LocalBackend

    return TestClient(create_app(LocalBackend(tmp_path / "local"), token=TOKEN))


def test_the_api_refuses_an_alias_bomb_in_bounded_time_and_keeps_answering(client):
    body = billion_laughs(504)
    assert len(body.encode()) == 504
    start = time.perf_counter()
    response = client.post("/sweeps", content=body, headers={**AUTH, "Content-Type": "application/yaml"})
    assert time.perf_counter() - start < 1.0
    assert 400 <= response.status_code < 500 and "aliases counted" in response.text
    assert client.get("/sweeps", headers=AUTH).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_the_api_refuses_an_oversized_body_before_reading_it(client):
    big = b"#" * ((1 << 20) + 1)
    response = client.post("/sweeps", content=big, headers={**AUTH, "Content-Type": "application/yaml"})
    assert response.status_code == 413

    def chunks():  # no Content-Length: streamed, and cut off past the limit
        for _ in range(40):
            yield b"#" * 65536

    response = client.post("/sweeps", content=chunks(), headers={**AUTH, "Content-Type": "application/yaml"})
    assert response.status_code == 413
    response = client.post("/sweeps", content="a: \xe9".encode("latin-1"), headers={**AUTH, "Content-Type": "application/yaml"})
    assert response.status_code == 400 and "byte offset 3" in response.text
    deep = "[" * 100_000 + "]" * 100_000
    response = client.post("/sweeps", content=deep, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422


def test_the_live_service_refuses_the_504_byte_alias_bomb_in_under_a_second_and_stays_up(tmp_path):
    """The same bomb over HTTP to the real service (uvicorn serving the app), as the tester sent it."""
    import http.client
    from urllib.parse import urlparse

    from live_service import serve
    from service.control.api import create_app
    from service.control.backends import LocalBackend

    def call(url: str, method: str, path: str, body: str | None = None) -> int:
        parsed = urlparse(url)
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        connection.request(method, path, body=body, headers={**AUTH, "Content-Type": "application/yaml"})
        status = connection.getresponse().status
        connection.close()
        return status

    with serve(create_app(LocalBackend(tmp_path / "live"), token=TOKEN)) as url:
        start = time.perf_counter()
        status = call(url, "POST", "/sweeps", billion_laughs(504))
        took = time.perf_counter() - start
        assert 400 <= status < 500 and took < 1.0, (status, took)
        assert call(url, "GET", "/sweeps") == 200  # still up
