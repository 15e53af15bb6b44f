"""The sweep service API as clients see it: the real FastAPI app (TestClient, and uvicorn for the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from live_service import REPO, serve, sweepctl

from conftest import BASE_SPEC
from service.control.api import OPEN_PATHS, ServiceConfigError, create_app
from service.control.backends import LocalBackend
from service.web.pages import OPEN_PAGES

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# Two mistakes the loader reports together: an unknown key (with a did-you-mean) and a bad value.
BAD_SPEC = """\
name: bad-sweep
data: {name: digits}
model:
  name: cnn
  filtres: 8
  dropout: high
"""


@pytest.fixture
def app(tmp_path):
    return create_app(LocalBackend(tmp_path / "local"), token=TOKEN)


@pytest.fixture
def client(app):
    return TestClient(app)


def _protected_routes(app) -> list[tuple[str, str]]:
    """The API's routes behind a token (the web pages: tests/web/test_pages.py)."""
    routes = [(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in sorted(r.methods - {"HEAD"})]
    return [(method, path) for method, path in routes if path not in OPEN_PATHS and not _is_page(path)]


def _is_page(path: str) -> bool:
    return path == "/" or path.startswith("/ui/")


def test_every_page_but_the_login_and_the_assets_redirects_to_the_login(app, client):
    pages = [(m, r.path) for r in app.routes if isinstance(r, APIRoute) and _is_page(r.path)
             for m in sorted(r.methods - {"HEAD"})]
    closed = [(m, p) for m, p in pages if p not in OPEN_PAGES]
    assert ("GET", "/ui/sweeps/{name}") in closed and ("GET", "/ui/data/sweeps/{name}") in closed
    for method, path in closed:
        url = path.replace("{name}", "some-sweep").replace("{trial_id}", "t1")
        response = client.request(method, url, headers={"Authorization": "Bearer not-the-token"}, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/ui/login?next="), (path, response)


def test_every_protected_route_refuses_a_missing_or_wrong_token(app, client):
    protected = _protected_routes(app)
    # Every documented verb is there: a route removed or renamed shows up here too.
    assert {("POST", "/sweeps"), ("GET", "/sweeps"), ("GET", "/sweeps/{name}"), ("DELETE", "/sweeps/{name}"),
            ("GET", "/sweeps/{name}/best"), ("GET", "/sweeps/{name}/logs")} <= set(protected)
    wrong = [None, {"Authorization": "Bearer not-the-token"}, {"Authorization": f"Basic {TOKEN}"},
             {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN}]
    let_through = []
    for method, path in protected:
        url = path.replace("{name}", "some-sweep")
        for headers in wrong:
            response = client.request(method, url, headers=headers, content=BAD_SPEC)
            if response.status_code != 401 or response.headers.get("www-authenticate") != "Bearer":
                let_through.append((method, path, headers, response.status_code))
            elif "bearer token" not in response.json()["detail"]:
                let_through.append((method, path, headers, "no explanation"))
    assert let_through == []


def test_the_open_routes_are_exactly_health_metrics_and_the_api_description(app, client):
    open_routes = {r.path for r in app.routes if getattr(r, "path", None) in OPEN_PATHS}
    every_route = {r.path for r in app.routes}
    pages = {r.path for r in app.routes if _is_page(getattr(r, "path", ""))}
    assert every_route - pages - {p for _, p in _protected_routes(app)} == open_routes == set(OPEN_PATHS)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/openapi.json").status_code == 200


def test_metrics_count_requests_by_route_and_status(client):
    client.get("/sweeps")  # 401
    client.get("/sweeps", headers=AUTH)  # 200
    client.get("/sweeps/missing", headers=AUTH)  # 404
    text = client.get("/metrics").text
    assert 'sweep_service_requests_total{method="GET",route="/sweeps",status="401"} 1.0' in text
    assert 'sweep_service_requests_total{method="GET",route="/sweeps",status="200"} 1.0' in text
    assert 'sweep_service_requests_total{method="GET",route="/sweeps/{name}",status="404"} 1.0' in text
    assert "sweep_service_sweeps_submitted_total 0.0" in text


def _cli_problem_lines(tmp_path, text: str) -> list[str]:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    result = subprocess.run([sys.executable, "-m", "service.cli", "validate", str(spec)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    return [line for line in result.stderr.splitlines() if line.startswith("  ")]


def test_a_bad_spec_gets_422_with_the_clis_messages(tmp_path, client):
    response = client.post("/sweeps", content=BAD_SPEC, headers={**AUTH, "Content-Type": "application/yaml"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    cli_lines = _cli_problem_lines(tmp_path, BAD_SPEC)
    assert len(cli_lines) == 2
    assert detail["message"].splitlines()[1:] == cli_lines
    assert detail["message"].startswith("<request>: 2 problems")
    by_path = {e["path"]: e for e in detail["errors"]}
    assert by_path["model.filtres"]["line"] == 5 and "did you mean 'filters'" in by_path["model.filtres"]["message"]
    assert by_path["model.dropout"]["line"] == 6 and "got 'high'" in by_path["model.dropout"]["message"]


def test_json_specs_and_set_overrides_are_validated_like_yaml(client):
    spec = json.dumps({**BASE_SPEC, "name": "json-sweep"}, indent="\t")  # tabs: valid JSON, not YAML
    bad_override = client.post("/sweeps?set=train.epochs=zero&set=search.num_smaples=2", content=spec,
                               headers={**AUTH, "Content-Type": "application/json"})
    assert bad_override.status_code == 422
    message = bad_override.json()["detail"]["message"]
    assert "train.epochs (--set): Input should be a valid integer" in message
    assert "search.num_smaples (--set): unknown key; did you mean 'num_samples'?" in message

    not_json = client.post("/sweeps", content='{"name": "x",\n "data": }', headers={**AUTH, "Content-Type": "application/json"})
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["detail"]["message"]
    assert "(line 2)" in not_json.json()["detail"]["message"]

    unsupported = client.post("/sweeps", content="<spec/>", headers={**AUTH, "Content-Type": "application/xml"})
    assert unsupported.status_code == 415 and "application/yaml" in unsupported.json()["detail"]


def test_a_sweep_with_results_in_storage_is_refused_and_nothing_starts(tmp_path, client):
    storage_root = tmp_path / "runs"
    (storage_root / "done-before").mkdir(parents=True)
    (storage_root / "done-before" / "spec.yaml").write_text("name: done-before\n")
    spec = yaml.safe_dump({**BASE_SPEC, "name": "done-before", "storage": {"uri": str(storage_root)}})
    response = client.post("/sweeps", content=spec, headers=AUTH)
    assert response.status_code == 409
    assert "already has results in" in response.json()["detail"] and "--set name=" in response.json()["detail"]
    assert client.get("/sweeps", headers=AUTH).json() == {"sweeps": []}
    assert not (tmp_path / "local" / "done-before").exists()


def test_unknown_sweeps_are_404_with_a_message_on_every_sweep_route(client):
    for method, url in [("GET", "/sweeps/nope"), ("DELETE", "/sweeps/nope"), ("GET", "/sweeps/nope/best"),
                        ("GET", "/sweeps/nope/logs")]:
        response = client.request(method, url, headers=AUTH)
        assert response.status_code == 404, (method, url)
        assert "no sweep 'nope'" in response.json()["detail"]


def test_the_service_refuses_to_start_without_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("SWEEP_SERVICE_TOKEN", raising=False)
    with pytest.raises(ServiceConfigError, match="SWEEP_SERVICE_TOKEN"):
        create_app(LocalBackend(tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "SWEEP_SERVICE_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "service.control.api", "--port", "0"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "SWEEP_SERVICE_TOKEN" in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_backend_setting_is_a_clear_startup_error(monkeypatch):
    env = {**os.environ, "SWEEP_SERVICE_TOKEN": TOKEN, "SWEEP_SERVICE_BACKEND": "docker"}
    result = subprocess.run([sys.executable, "-m", "service.control.api"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "SWEEP_SERVICE_BACKEND must be 'kubernetes' or 'local', got 'docker'" in result.stderr


# ---------------------------------------------------------------------------- sweepctl against the live service
@pytest.fixture
def live(app):
    with serve(app) as url:
        yield url


def test_cli_prints_the_servers_message_and_exits_2_on_4xx(tmp_path, live):
    missing = sweepctl("status", "nope", server=live, token=TOKEN, home=tmp_path)
    assert missing.returncode == 2
    assert "no sweep 'nope'" in missing.stderr and "(HTTP 404)" in missing.stderr
    assert "Traceback" not in missing.stderr

    wrong_token = sweepctl("list", server=live, token="wrong", home=tmp_path)
    assert wrong_token.returncode == 2 and "missing or wrong bearer token" in wrong_token.stderr

    listed = sweepctl("list", server=live, token=TOKEN, home=tmp_path)
    assert listed.returncode == 0 and f"no sweeps on {live}" in listed.stdout


def test_cli_submit_reports_spec_problems_with_the_files_name_before_sending(tmp_path, live):
    spec = tmp_path / "bad.yaml"
    spec.write_text(BAD_SPEC)
    result = sweepctl("submit", str(spec), server=live, token=TOKEN, home=tmp_path)
    assert result.returncode == 2
    assert f"{spec}: 2 problems" in result.stderr and "model.filtres (line 5)" in result.stderr
    from_stdin = sweepctl("submit", "-", "--set", "train.epochs=0", server=live, token=TOKEN, home=tmp_path,
                          stdin=yaml.safe_dump(BASE_SPEC))
    assert from_stdin.returncode == 2 and "<stdin>: 1 problem" in from_stdin.stderr
    assert "train.epochs (--set)" in from_stdin.stderr


def test_cli_connection_refused_names_the_server(tmp_path):
    from live_service import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = sweepctl("list", server=url, token=TOKEN, home=tmp_path)
    assert result.returncode == 1
    assert f"cannot reach the sweep service at {url}" in result.stderr and "Traceback" not in result.stderr


def test_cli_config_file_must_be_private(tmp_path, live):
    config = tmp_path / ".config" / "sweepctl" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump({"server": live, "token": TOKEN}))
    config.chmod(0o644)
    refused = sweepctl("list", server=None, token=None, home=tmp_path)
    assert refused.returncode == 2
    assert f"chmod 600 {config}" in refused.stderr and "0644" in refused.stderr

    config.chmod(0o600)
    accepted = sweepctl("list", server=None, token=None, home=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert f"no sweeps on {live}" in accepted.stdout


def test_cli_without_a_server_says_where_to_set_one(tmp_path):
    result = sweepctl("list", server=None, token=TOKEN, home=tmp_path)
    assert result.returncode == 2
    assert "--server URL" in result.stderr and "SWEEPCTL_SERVER" in result.stderr


def test_the_sweep_service_console_script_serves_the_api(tmp_path):
    import urllib.request

    from live_service import free_port

    port = free_port()
    env = {**os.environ, "SWEEP_SERVICE_TOKEN": TOKEN, "SWEEP_SERVICE_BACKEND": "local",
           "SWEEP_SERVICE_WORKDIR": str(tmp_path / "local")}
    script = Path(sys.executable).with_name("sweep-service")
    server = subprocess.Popen([str(script), "--port", str(port)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        listed = None
        for _ in range(300):
            if server.poll() is not None:
                break
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/sweeps", headers=AUTH)
                listed = json.loads(urllib.request.urlopen(request, timeout=5).read())
                break
            except OSError:
                time.sleep(0.1)
        assert listed == {"sweeps": []}, server.stderr.read() if server.poll() is not None else "no answer"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_kubernetes_backend_refuses_to_start_without_configuration_or_credentials(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "KUBECONFIG"))}
    env.update(SWEEP_SERVICE_TOKEN=TOKEN, SWEEP_SERVICE_BACKEND="kubernetes", HOME=str(tmp_path),
               SWEEP_SERVICE_CONFIG=str(tmp_path / "config.yaml"))

    def start():
        return subprocess.run([sys.executable, "-m", "service.control.api"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)

    no_config = start()
    assert no_config.returncode == 2 and f"no service configuration at {tmp_path / 'config.yaml'}" in no_config.stderr
    (tmp_path / "config.yaml").write_text("storage_uri: s3://sweeps/runs\nimage: registry.example.com/s:1\n")
    no_cluster = start()
    assert no_cluster.returncode == 2, no_cluster.stderr
    assert "no Kubernetes configuration" in no_cluster.stderr and "Traceback" not in no_cluster.stderr
