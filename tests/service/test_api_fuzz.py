"""The API's OpenAPI document tells the truth, and schemathesis agrees.

- What /openapi.json declares, checked directly: every status a route can answer with and its
  body's model, the request body of POST /sweeps (YAML and JSON, the spec's JSON Schema), the
  name rule on every {name}, /metrics' content type, the bearer scheme; a 405 lists every method
  of its path in Allow.
- schemathesis (bench/fuzz_api.py's run, every phase and check, as `st run` does) against the real
  app over a real LocalBackend, with an admin token, at a CI size: no 5xx, no conformance failure.
  `make fuzz` runs the same at --examples 100 (>1,000 calls; docs/RELIABILITY.md, "Fuzzing the API").
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.control.api import OPEN_PATHS, create_app
from service.control.backends import LocalBackend, name_rule
from service.core.spec import SweepSpec

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "fuzz-test-token-0123456789"


def _fuzz_api():
    spec = importlib.util.spec_from_file_location("fuzz_api", ROOT / "bench" / "fuzz_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def app(tmp_path):
    return create_app(LocalBackend(tmp_path / "local"), token=TOKEN, tokens_file="")


@pytest.fixture
def document(app):
    return TestClient(app).get("/openapi.json").json()


def _operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def _resolve(document, schema: dict) -> dict:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_every_guarded_operation_declares_its_refusals_with_their_models(document):
    declared = {(method, path): set(op["responses"]) for method, path, op in _operations(document)}
    expected = {
        ("POST", "/sweeps"): {"201", "400", "401", "403", "409", "413", "415", "422", "502", "503"},
        ("GET", "/sweeps"): {"200", "401", "502", "503"},
        ("DELETE", "/sweeps/{name}"): {"200", "401", "403", "404", "409", "422", "502", "503"},
        # 409: running (or succeeded: nothing to resume); 422: also a ?confirm= that is not {name}
        ("POST", "/sweeps/{name}/resume"): {"200", "401", "403", "404", "409", "422", "502", "503"},
        ("DELETE", "/sweeps/{name}/data"): {"200", "401", "403", "404", "409", "422", "502", "503"},
        # 409: a checkpoint that does not match its manifest (found before anything is sent)
        ("GET", "/sweeps/{name}/trials/{trial_id}/checkpoint"): {"200", "401", "404", "409", "422", "502", "503"},
    }
    for (method, path), codes in declared.items():
        if path in OPEN_PATHS:
            assert codes == {"200"}, (method, path)
            continue
        want = expected.get((method, path), {"200", "401", "404", "422", "502", "503"})
        assert codes == want, (method, path)
    for method, path, op in _operations(document):
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")):
                (media_type,) = response["content"]  # errors are JSON, also on the text routes
                assert media_type == "application/json", (method, path, code)
                assert "$ref" in response["content"][media_type]["schema"], (method, path, code)
        if path not in OPEN_PATHS:
            assert op["responses"]["401"]["headers"]["WWW-Authenticate"]
            assert op["security"] == [{"HTTPBearer": []}]
    assert document["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "a user's token (the tokens file) or the admin token"}


def test_post_sweeps_declares_its_body_and_its_own_422(document):
    post = document["paths"]["/sweeps"]["post"]
    body = post["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"application/yaml", "text/yaml", "application/json"}
    for content in body["content"].values():
        assert content["schema"] == {"$ref": "#/components/schemas/SweepSpec"}
    spec_schema = document["components"]["schemas"]["SweepSpec"]
    assert spec_schema["required"] == SweepSpec.model_json_schema()["required"]
    assert spec_schema["properties"]["name"]["pattern"] == name_rule()["pattern"]
    # Every reference in the document resolves (the spec's own definitions live in components too).
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', __import__("json").dumps(document)))
    assert refs <= set(document["components"]["schemas"])
    problems = _resolve(document, post["responses"]["422"]["content"]["application/json"]["schema"])
    assert problems["title"] == "SpecProblems"


def test_names_metrics_and_text_routes_are_declared_as_they_are(document):
    for method, path, op in _operations(document):
        params = {p["name"]: p for p in op.get("parameters", [])}
        if "{name}" in path:
            schema = params["name"]["schema"]
            assert (schema["pattern"], schema["maxLength"]) == (name_rule()["pattern"], name_rule()["maxLength"])
        if "{trial_id}" in path:
            assert params["trial_id"]["schema"]["pattern"]
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain; version=0.0.4"}
    for path in ("/sweeps/{name}/logs", "/sweeps/{name}/trials/{trial_id}/logs"):
        assert set(document["paths"][path]["get"]["responses"]["200"]["content"]) == {"text/plain"}


def test_answers_match_the_document(app):
    client = TestClient(app)
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # A 405 lists every method of its path (Starlette alone named only the first route's).
    for path, allowed in (("/sweeps", "GET, POST"), ("/sweeps/some-sweep", "DELETE, GET"),
                          ("/sweeps/some-sweep/logs", "GET")):
        response = client.request("PUT", path, headers=auth)
        assert response.status_code == 405 and response.headers["allow"] == allowed, path
    # POST's 422 is the spec's problems; a bad name or query value is FastAPI's validation list.
    bad_spec = client.post("/sweeps", content="name: x\n", headers={**auth, "Content-Type": "application/yaml"})
    assert bad_spec.status_code == 422 and set(bad_spec.json()["detail"]) == {"message", "errors"}
    for url in ("/sweeps/NOT_A_NAME", "/sweeps/x/trials?status=bogus", "/sweeps/x/trials?sort=bogus",
                "/sweeps/x/logs?tail=-1", "/sweeps/x/trials/%2e%2e"):
        response = client.get(url, headers=auth)
        assert response.status_code == 422, url
        assert isinstance(response.json()["detail"], list) and response.json()["detail"][0]["loc"], url
    # An unknown path is a 404, not a redirect.
    assert client.get("/sweeps/", headers=auth, follow_redirects=False).status_code == 404


@pytest.mark.timeout(180)
def test_schemathesis_finds_no_server_error_and_no_conformance_failure(tmp_path):
    started = time.monotonic()
    result = _fuzz_api().run(examples=10, seed=0, workdir=tmp_path)
    seconds = time.monotonic() - started
    print(f"schemathesis: {result['calls']} calls in {seconds:.1f} s, statuses {result['statuses']}")
    assert result["calls"] >= 200, result
    assert result["errors"] == [], result["errors"]
    assert result["server_errors"] == 0, result["statuses"]
    assert result["failures"] == {}, result["samples"]
    # It exercised the API, not only its refusals: sweeps were created, read and cancelled.
    assert result["statuses"].get(201, 0) >= 1 and result["statuses"].get(200, 0) >= 10
