"""Trial logs and the trial API against real sweeps: one trial trains, one raises.

- Local storage, through the service's local backend: POST /sweeps runs `sweepctl run`; the driver's
  output holds no traceback, `sweepctl logs --trial` and GET .../trials/{id}/logs do.
- S3 storage (moto), read through the Kubernetes backend's storage path (its RayJob is gone, as
  after ttlSecondsAfterFinished): the failing trial's traceback, the trial routes with auth; the
  record read from S3 equals the same objects read from local disk.
(A 2-worker trial's rank logs on S3: tests/e2e/test_s3_sweeps.py's N-worker test.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kubernetes.client
import pytest
import yaml
from fastapi.testclient import TestClient

from conftest import BASE_SPEC, deep_update, point_aws_at
from service.control.api import create_app
from service.control.backends import KubernetesBackend, LocalBackend
from service.control.rayjob import RenderOptions
from service.core import storage
from service.core.record import SweepStore

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# One grid point trains; the other's weights file does not exist, so its trial raises
# FileNotFoundError while building the model (no restarts: max_failures 0).
MODELS = {"grid": [
    {"name": "cnn", "num_conv_layers": 1, "filters": 8, "num_fc_layers": 1},
    {"name": "resnet", "depth": 18, "mode": "frozen", "weights_uri": "/nonexistent/resnet18-weights.pt"},
]}


def _spec(name: str, storage_uri: str, **changes) -> dict:
    base = {k: v for k, v in BASE_SPEC.items() if k != "model"}
    return deep_update(base, {"name": name, "model": MODELS, "storage": {"uri": storage_uri},
                              "resources": {"max_failures": 0}, **changes})


def sweepctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=_env())


def _env() -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("SWEEPCTL_SERVER", "SWEEPCTL_TOKEN")}
    env["XDG_CONFIG_HOME"] = "/nonexistent"  # no sweepctl config file: trials/logs read storage
    return env


def _failed_and_good(trials: list[dict]) -> tuple[dict, dict]:
    failed = [t for t in trials if t["status"] == "error"]
    good = [t for t in trials if t["status"] == "terminated"]
    assert len(failed) == 1 and len(good) == 1, trials
    return failed[0], good[0]


def test_a_raising_trial_keeps_its_traceback_in_its_log_local_storage_through_the_local_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    runs = tmp_path / "runs"
    backend = LocalBackend(tmp_path / "service")
    client = TestClient(create_app(backend, token=TOKEN))
    spec = _spec("logs-local", str(runs))
    created = client.post("/sweeps", content=yaml.safe_dump(spec), headers={**AUTH, "Content-Type": "application/yaml"})
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + 420
    while (state := client.get("/sweeps/logs-local", headers=AUTH).json()["state"]) in ("pending", "running"):
        assert time.monotonic() < deadline, "sweep did not finish"
        time.sleep(2)
    driver_output = backend.logs("logs-local")
    assert state == "succeeded", driver_output
    # The driver says which trial failed and where its traceback is, in one line; no traceback.
    assert "Traceback" not in driver_output
    assert "failed: FileNotFoundError" in driver_output and "sweepctl logs logs-local --trial" in driver_output

    # sweepctl, from local storage, no service involved
    listed = sweepctl("trials", "logs-local", "--storage", str(runs), "--json")
    assert listed.returncode == 0, listed.stderr
    failed, good = _failed_and_good(json.loads(listed.stdout)["trials"])
    assert failed["error"]["type"] == "FileNotFoundError" and "resnet18-weights.pt" in failed["error"]["message"]
    assert failed["error"]["log"] == SweepStore(str(runs), "logs-local").trial_log_uri(failed["trial_id"])
    log = sweepctl("logs", "logs-local", "--trial", failed["trial_id"], "--storage", str(runs))
    assert log.returncode == 0, log.stderr
    assert "Traceback (most recent call last)" in log.stdout and "FileNotFoundError" in log.stdout
    assert "resnet18-weights.pt" in log.stdout
    good_log = sweepctl("logs", "logs-local", "--trial", good["trial_id"], "--storage", str(runs)).stdout
    assert "epoch 2/2" in good_log and "Traceback" not in good_log
    missing = sweepctl("logs", "logs-local", "--trial", "nope_00000", "--storage", str(runs))
    assert missing.returncode == 2 and "no log for trial 'nope_00000'" in missing.stderr and "Traceback" not in missing.stderr

    # the same through the API
    api_trials = client.get("/sweeps/logs-local/trials", headers=AUTH)
    assert api_trials.status_code == 200
    assert api_trials.json()["trials"] == json.loads(listed.stdout)["trials"]
    assert [t["status"] for t in client.get("/sweeps/logs-local/trials?status=error", headers=AUTH).json()["trials"]] == ["error"]
    detail = client.get(f"/sweeps/logs-local/trials/{good['trial_id']}", headers=AUTH).json()
    assert [h["epoch"] for h in detail["history"]] == [1, 2] and detail["checkpoint"] in [c["uri"] for c in detail["checkpoints"]]
    assert detail["log_url"] == f"/sweeps/logs-local/trials/{good['trial_id']}/logs"
    api_log = client.get(f"/sweeps/logs-local/trials/{failed['trial_id']}/logs", headers=AUTH)
    assert api_log.status_code == 200 and api_log.text == log.stdout
    for path in ("/sweeps/logs-local/trials", f"/sweeps/logs-local/trials/{good['trial_id']}",
                 f"/sweeps/logs-local/trials/{good['trial_id']}/logs"):
        assert client.get(path).status_code == 401
    assert client.get("/sweeps/logs-local/trials/nope_00000", headers=AUTH).status_code == 404
    assert client.get("/sweeps/logs-local/trials/..%2F..", headers=AUTH).status_code in (404, 422)
    assert client.get("/sweeps/logs-local/trials?sort=colour", headers=AUTH).status_code == 422


class NoRayJobs:
    """A Kubernetes API stand-in that knows no RayJob (each one was removed after it finished):
    the backend answers from storage, as it does in a cluster."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                                   "reason": "NotFound", "message": "rayjobs.ray.io not found"}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"


def test_a_raising_trial_on_s3_through_the_kubernetes_backends_storage_path(s3_server, monkeypatch, tmp_path):
    point_aws_at(s3_server, monkeypatch, tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    bucket = f"logs-{uuid.uuid4().hex[:10]}"
    storage.s3_client().create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/team-a"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec("logs-s3", root, train={"epochs": 1})))
    run = sweepctl("run", str(spec_file))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr

    listed = sweepctl("trials", "logs-s3", "--storage", root, "--json")
    assert listed.returncode == 0, listed.stderr
    failed, good = _failed_and_good(json.loads(listed.stdout)["trials"])
    failed_log = sweepctl("logs", "logs-s3", "--trial", failed["trial_id"], "--storage", root).stdout
    assert "FileNotFoundError" in failed_log and "Traceback (most recent call last)" in failed_log
    assert failed["stop_reason"].startswith("FileNotFoundError: ")
    good_log = sweepctl("logs", "logs-s3", "--trial", good["trial_id"], "--storage", root).stdout
    assert good_log.count("epoch 1/1:") == 1  # each line once

    api = NoRayJobs()
    config = kubernetes.client.Configuration(host=api.url)
    backend = KubernetesBackend("team-a", RenderOptions(image="x/sweep-service:1", storage_uri=root),
                                api_client=kubernetes.client.ApiClient(config))
    client = TestClient(create_app(backend, token=TOKEN))
    body = client.get("/sweeps/logs-s3/trials", headers=AUTH).json()
    assert body["trials"] == json.loads(listed.stdout)["trials"]
    detail = client.get(f"/sweeps/logs-s3/trials/{failed['trial_id']}", headers=AUTH).json()
    assert detail["status"] == "error" and detail["error"]["log"].startswith(f"{root}/logs-s3/")
    api_log = client.get(f"/sweeps/logs-s3/trials/{failed['trial_id']}/logs", headers=AUTH)
    assert api_log.status_code == 200 and api_log.text == failed_log
    assert client.get(f"/sweeps/logs-s3/trials/{failed['trial_id']}/logs").status_code == 401
    assert client.get("/sweeps/logs-s3", headers=AUTH).json()["progress"]["trial_states"] == {"error": 1, "terminated": 1}

    # The record reads the same from S3 as from a local copy of the same objects.
    local = tmp_path / "copy"
    storage.download_dir(f"{root}/logs-s3", local / "logs-s3")
    from_s3, from_disk = SweepStore(root, "logs-s3"), SweepStore(str(local), "logs-s3")
    assert from_s3.read_index() == from_disk.read_index()
    assert from_s3.read_trials() == from_disk.read_trials()
    assert from_s3.read_driver_log() == from_disk.read_driver_log() != ""
    for trial in (failed, good):
        assert from_s3.read_trial_log(trial["trial_id"]) == from_disk.read_trial_log(trial["trial_id"])
