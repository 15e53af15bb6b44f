"""The Kubernetes backend through the real `kubernetes` client and the real API app.

No Kubernetes API server can run here, so a small HTTP stand-in serves the RayJob endpoints the
client calls (/apis/ray.io/v1/namespaces/{ns}/rayjobs[/{name}]) and records every request. Storage
is a real S3 protocol server (moto), as in a cluster.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import boto3
import kubernetes.client
import pytest
import yaml
from fastapi.testclient import TestClient
from live_service import free_port

from conftest import BASE_SPEC, point_aws_at
from service.core import storage
from service.control.api import create_app
from service.control.backends import OWNER_ANNOTATION, KubernetesBackend, rayjob_state
from service.core.loading import parse_spec
from service.core.record import (
    EpochResult, Objective, SegmentedLog, SweepStore, TrialRecord, TrialSummary, new_index,
)
from service.control.rayjob import SPEC_ENV, RenderOptions, render_rayjob

TOKEN = "api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SA_TOKEN = "service-account-token-xyz"
NAMESPACE = "team-a"
RAYJOBS = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs"


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}


class FakeApiServer:
    """RayJob custom objects in memory, Kubernetes-style answers, every request recorded.

    ``fail_next[method] = (code, reason, message)`` makes the next such request fail the way the
    API server does (a Status object), e.g. RBAC's 403 or an etcd 500."""

    def __init__(self):
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[dict] = []
        self.fail_next: dict[str, tuple[int, str, str]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                server.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                        "authorization": self.headers.get("Authorization"), "body": body})
                if self.command in server.fail_next:
                    code, reason, message = server.fail_next.pop(self.command)
                    return self._answer(code, _status(code, reason, message))
                self._answer(*server.route(self.command, url.path, parse_qs(url.query), body))

            do_GET = do_POST = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def route(self, method: str, path: str, query: dict, body) -> tuple[int, dict]:
        parts = path.strip("/").split("/")  # apis ray.io v1 namespaces NS rayjobs [NAME]
        if parts[:3] != ["apis", "ray.io", "v1"] or len(parts) not in (6, 7) or parts[5] != "rayjobs":
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        namespace, name = parts[4], parts[6] if len(parts) == 7 else None
        if method == "POST" and name is None:
            key = (namespace, body["metadata"]["name"])
            if key in self.objects:
                return 409, _status(409, "AlreadyExists", f'rayjobs.ray.io "{key[1]}" already exists')
            created = json.loads(json.dumps(body))
            created["metadata"].update(namespace=namespace, uid=f"uid-{len(self.objects)}",
                                       creationTimestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            self.objects[key] = created
            return 201, created
        if method == "GET" and name is None:
            wanted = dict(pair.split("=", 1) for pair in query.get("labelSelector", [""])[0].split(",") if pair)
            items = [o for (ns, _), o in self.objects.items() if ns == namespace
                     and all(o["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())]
            return 200, {"apiVersion": "ray.io/v1", "kind": "RayJobList", "metadata": {}, "items": items}
        if (namespace, name) not in self.objects:
            return 404, _status(404, "NotFound", f'rayjobs.ray.io "{name}" not found')
        if method == "GET":
            return 200, self.objects[(namespace, name)]
        if method == "DELETE":
            del self.objects[(namespace, name)]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}
        return 405, _status(405, "MethodNotAllowed", "method not allowed")

    def calls(self, method: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method]


@pytest.fixture
def api_server():
    server = FakeApiServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def bucket(s3_server, monkeypatch, tmp_path, request):
    """A fresh bucket on the moto S3 server; the service reads summaries and logs from it."""
    point_aws_at(s3_server, monkeypatch, tmp_path)
    name = "k8s-" + request.node.name.replace("_", "-").lower()[:50].strip("-")
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def options(bucket):
    return RenderOptions(image="registry.example.com/sweep-service:1.2.3", storage_uri=f"s3://{bucket}/runs")


def _backend(url: str, options: RenderOptions) -> KubernetesBackend:
    config = kubernetes.client.Configuration(host=url, api_key={"authorization": SA_TOKEN},
                                             api_key_prefix={"authorization": "Bearer"})
    return KubernetesBackend(NAMESPACE, options, api_client=kubernetes.client.ApiClient(config))


@pytest.fixture
def client(api_server, options):
    return TestClient(create_app(_backend(api_server.url, options), token=TOKEN))


SPEC_TEXT = "# a comment the annotation keeps\n" + yaml.safe_dump({**BASE_SPEC, "name": "k8s-sweep"})


def _submit(client, text: str = SPEC_TEXT, query: str = ""):
    return client.post(f"/sweeps{query}", content=text, headers={**AUTH, "Content-Type": "application/yaml"})


def test_submit_creates_exactly_the_rendered_rayjob_in_the_namespace(api_server, client, options, bucket):
    response = _submit(client, query="?set=train.epochs=1")
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "k8s-sweep" and response.json()["state"] == "pending"
    assert response.json()["storage_uri"] == f"s3://{bucket}/runs"

    posts = api_server.calls("POST")
    assert len(posts) == 1
    assert posts[0]["path"] == RAYJOBS
    assert posts[0]["authorization"] == f"Bearer {SA_TOKEN}"
    spec = parse_spec(SPEC_TEXT, overrides=["train.epochs=1"])
    expected = render_rayjob(spec, options, source_yaml=SPEC_TEXT)
    # The rendered RayJob, plus who submitted it (TOKEN is the single admin token: the user "admin").
    expected["metadata"]["annotations"][OWNER_ANNOTATION] = "admin"
    assert posts[0]["body"] == expected
    assert response.json()["owner"] == "admin"
    assert api_server.calls("DELETE") == []
    # Every call went to this namespace only.
    assert all(r["path"].startswith(RAYJOBS) for r in api_server.requests)


def test_submit_of_an_existing_name_is_409_and_creates_nothing_more(api_server, client):
    assert _submit(client).status_code == 201
    again = _submit(client)
    assert again.status_code == 409
    assert "'k8s-sweep' already exists" in again.json()["detail"]
    assert len(api_server.calls("POST")) == 1


@pytest.mark.parametrize(
    "code, reason, message, expected_status, hint",
    [
        (409, "AlreadyExists", 'rayjobs.ray.io "k8s-sweep" already exists', 409, "already exists"),
        (403, "Forbidden", 'rayjobs.ray.io is forbidden: User "system:serviceaccount:team-a:sweep" cannot '
                           'create resource "rayjobs"', 502, "needs RayJob permissions in namespace team-a"),
        (500, "InternalError", "etcdserver: request timed out", 502, "refused to create the RayJob"),
        (404, "NotFound", "the server could not find the requested resource", 502, "KubeRay operator"),
    ],
)
def test_kubernetes_api_errors_on_submit_become_clear_http_errors(api_server, client, code, reason, message,
                                                                  expected_status, hint):
    api_server.fail_next["POST"] = (code, reason, message)
    response = _submit(client)
    assert response.status_code == expected_status
    detail = response.json()["detail"]
    assert message in detail and hint in detail and str(code) in detail
    assert api_server.objects == {}


def test_kubernetes_api_errors_on_reads_become_clear_http_errors(api_server, client):
    api_server.fail_next["GET"] = (403, "Forbidden", 'cannot list resource "rayjobs" in namespace "team-a"')
    response = client.get("/sweeps", headers=AUTH)
    assert response.status_code == 502
    assert 'cannot list resource "rayjobs"' in response.json()["detail"]
    api_server.fail_next["GET"] = (503, "ServiceUnavailable", "apiserver is shutting down")
    response = client.get("/sweeps/k8s-sweep", headers=AUTH)
    assert response.status_code == 503 and "apiserver is shutting down" in response.json()["detail"]
    metrics = client.get("/metrics").text
    assert 'sweep_service_backend_errors_total{status="502"} 1.0' in metrics
    assert 'sweep_service_backend_errors_total{status="503"} 1.0' in metrics


def test_an_unreachable_api_server_is_503_naming_it(options):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    response = TestClient(create_app(_backend(url, options), token=TOKEN)).get("/sweeps", headers=AUTH)
    assert response.status_code == 503
    assert f"cannot reach the Kubernetes API server at {url}" in response.json()["detail"]


def _set_status(api_server, name: str, **status):
    api_server.objects[(NAMESPACE, name)]["status"] = status


def test_status_maps_the_rayjob_status_and_reads_progress_from_storage(api_server, client, bucket):
    assert _submit(client).status_code == 201
    assert client.get("/sweeps/k8s-sweep", headers=AUTH).json()["progress"] is None

    _set_status(api_server, "k8s-sweep", jobDeploymentStatus="Running", jobStatus="RUNNING")
    store = SweepStore(f"s3://{bucket}/runs", "k8s-sweep")
    best = TrialSummary(trial_id="abc_00001", status="running", config={"model.filters": 8}, epochs=2,
                        best=EpochResult(epoch=2, val_acc=0.93), checkpoint=f"{store.uri}/abc_00001/checkpoint_000001")
    index = new_index("k8s-sweep", Objective(metric="val_acc", mode="max"), max_epochs=2, num_trials=4, attempt=1)
    index.trial_states, index.best_trial, index.trials = {"running": 2, "terminated": 1}, "abc_00001", [best]
    storage.write_text_atomic(store.index_uri, index.model_dump_json())
    log = SegmentedLog(store.driver_log_uri(), attempt=1, stream="driver")
    log.write("k8s-sweep: 4 trials\nepoch 1 ...\n")
    log.close()

    body = client.get("/sweeps/k8s-sweep", headers=AUTH).json()
    assert body["state"] == "running"
    assert body["progress"]["trial_states"] == {"running": 2, "terminated": 1}
    assert body["progress"]["best"] == best.model_dump(mode="json") and "trials" not in body["progress"]
    assert client.get("/sweeps/k8s-sweep/best", headers=AUTH).json()["checkpoint"] == best.checkpoint
    logs = client.get("/sweeps/k8s-sweep/logs", headers=AUTH).text
    assert logs == store.read_driver_log() and logs.endswith("k8s-sweep: 4 trials\nepoch 1 ...\n")
    assert client.get("/sweeps/k8s-sweep/logs?tail=1", headers=AUTH).text == "epoch 1 ...\n"

    _set_status(api_server, "k8s-sweep", jobDeploymentStatus="Failed", jobStatus="FAILED",
                message="Job failed: driver exited with code 1")
    body = client.get("/sweeps/k8s-sweep", headers=AUTH).json()
    assert body["state"] == "failed" and body["message"] == "Job failed: driver exited with code 1"


@pytest.mark.parametrize(
    "status, state",
    [
        ({}, "pending"),
        ({"jobDeploymentStatus": "Initializing"}, "pending"),
        ({"jobDeploymentStatus": "Running", "jobStatus": "PENDING"}, "pending"),
        ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, "running"),
        ({"jobDeploymentStatus": "Retrying", "failed": 1}, "pending"),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, "succeeded"),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}, "failed"),
        ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"}, "failed"),
        ({"jobDeploymentStatus": "ValidationFailed", "message": "invalid spec"}, "failed"),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, "cancelled"),
        ({"jobDeploymentStatus": "Suspended"}, "cancelled"),
    ],
)
def test_rayjob_status_to_state(status, state):
    assert rayjob_state(status)[0] == state


def _embedded_spec(rayjob: dict) -> str:
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    return next(e["value"] for e in head["env"] if e["name"] == SPEC_ENV)


def test_list_selects_the_services_rayjobs_and_a_cancel_while_pending_keeps_the_sweep(api_server, client, bucket):
    assert _submit(client).status_code == 201
    submitted = json.loads(json.dumps(api_server.objects[(NAMESPACE, "k8s-sweep")]))
    # A RayJob somebody else made in the namespace is not the service's.
    api_server.objects[(NAMESPACE, "other")] = {"metadata": {"name": "other", "labels": {}}}
    listed = client.get("/sweeps", headers=AUTH).json()["sweeps"]
    assert [s["name"] for s in listed] == ["k8s-sweep"] and listed[0]["state"] == "pending"
    list_call = [r for r in api_server.calls("GET") if r["path"] == RAYJOBS][-1]
    assert list_call["query"]["labelSelector"] == ["app.kubernetes.io/managed-by=sweep-service"]

    cancelled = client.delete("/sweeps/k8s-sweep", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert [r["path"] for r in api_server.calls("DELETE")] == [f"{RAYJOBS}/k8s-sweep"]
    assert (NAMESPACE, "k8s-sweep") not in api_server.objects
    # Before deleting, the service told the driver (through storage) that this stop is a cancel, by whom.
    store = SweepStore(f"s3://{bucket}/runs", "k8s-sweep")
    request = storage.read_json(store.cancel_request_uri)
    assert request["by"] == "admin via the sweep service" and request["requested_at"] and request["owner"] == "admin"

    # Cancelled while pending (no driver wrote anything): the sweep stays, listed as cancelled, its owner kept.
    body = client.get("/sweeps/k8s-sweep", headers=AUTH).json()
    assert (body["state"], body["owner"], body["cancelled_by"]) == ("cancelled", "admin", "admin via the sweep service")
    assert body["cancelled_at"] == request["requested_at"] and body["progress"]["num_trials"] == 1
    listed = client.get("/sweeps", headers=AUTH).json()["sweeps"]
    assert [(s["name"], s["state"], s["owner"]) for s in listed] == [("k8s-sweep", "cancelled", "admin")]
    assert store.read_index().driver_attempt == 0 and store.read_spec_text() == _embedded_spec(submitted)
    assert _submit(client, query="?set=train.epochs=1").status_code == 409  # another spec: the name is taken
    # The very same spec resumes it (as POST /sweeps/{name}/resume does): the RayJob it was, rendered
    # from the spec kept in storage (the driver's `run - --resume` continues the sweep from there).
    resumed = _submit(client)
    assert resumed.status_code == 201 and resumed.json()["state"] == "pending" and resumed.json()["owner"] == "admin"
    again = api_server.calls("POST")[-1]["body"]
    assert _embedded_spec(again) == _embedded_spec(submitted) and again["spec"] == submitted["spec"]
    assert again["metadata"]["annotations"] == {OWNER_ANNOTATION: "admin"}


def test_a_finished_sweep_cannot_be_cancelled_and_outlives_its_rayjob(api_server, client, bucket):
    assert _submit(client).status_code == 201
    _set_status(api_server, "k8s-sweep", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    refused = client.delete("/sweeps/k8s-sweep", headers=AUTH)
    assert refused.status_code == 409 and "already succeeded" in refused.json()["detail"]
    assert api_server.calls("DELETE") == []

    # ttlSecondsAfterFinished removed the RayJob; the results in storage still answer.
    del api_server.objects[(NAMESPACE, "k8s-sweep")]
    index = new_index("k8s-sweep", Objective(metric="val_acc", mode="max"), max_epochs=2, num_trials=1, attempt=1)
    index.status, index.started_at, index.trial_states = "finished", "2030-01-01T00:00:00+00:00", {"terminated": 1}
    storage.write_text_atomic(SweepStore(f"s3://{bucket}/runs", "k8s-sweep").index_uri, index.model_dump_json())
    body = client.get("/sweeps/k8s-sweep", headers=AUTH).json()
    assert body["state"] == "succeeded" and "RayJob is gone" in body["message"]
    assert body["progress"]["trial_states"] == {"terminated": 1}
    # And its name stays taken: resubmitting would resume a finished sweep.
    resubmit = _submit(client)
    assert resubmit.status_code == 409 and "already exists (state: succeeded)" in resubmit.json()["detail"]


def _driver_ran(store: SweepStore, rayjob: dict, finished: list[str], status: str = "running") -> None:
    """What a driver leaves in storage: the spec it ran, trial records with histories, the index."""
    storage.write_text_atomic(store.spec_uri, _embedded_spec(rayjob))
    trials = []
    for trial_id in finished:
        record = TrialRecord(trial_id=trial_id, status="terminated", config={}, epochs=2,
                             history=[EpochResult(epoch=e, val_acc=0.5 + e / 10) for e in (1, 2)])
        storage.write_text_atomic(store.trial_record_uri(trial_id), record.model_dump_json())
        trials.append(TrialSummary.model_validate(record.model_dump(include=set(TrialSummary.model_fields))))
    index = new_index(store.name, Objective(metric="val_acc", mode="max"), max_epochs=2, num_trials=4, attempt=1)
    index.status, index.trials, index.trial_states = status, trials, {"terminated": len(trials)}
    storage.write_text_atomic(store.index_uri, index.model_dump_json())


def test_cancel_keeps_it_resume_makes_a_new_rayjob_and_delete_frees_the_name(api_server, client, options, bucket):
    assert _submit(client).status_code == 201
    _set_status(api_server, "k8s-sweep", jobDeploymentStatus="Running", jobStatus="RUNNING")
    store = SweepStore(f"s3://{bucket}/runs", "k8s-sweep")
    _driver_ran(store, api_server.objects[(NAMESPACE, "k8s-sweep")], ["t_00000", "t_00001"])
    sibling = SweepStore(f"s3://{bucket}/runs", "k8s-sweep-2")  # its name starts with this one's
    _driver_ran(sibling, api_server.objects[(NAMESPACE, "k8s-sweep")], [], status="finished")
    sibling_objects = sibling.stored_objects()

    assert client.delete("/sweeps/k8s-sweep", headers=AUTH).json()["state"] == "cancelled"
    assert (NAMESPACE, "k8s-sweep") not in api_server.objects
    # The driver is still stopping (its record says running): cancelled all the same, and listed.
    body = client.get("/sweeps/k8s-sweep", headers=AUTH).json()
    assert (body["state"], body["owner"], body["cancelled_by"]) == ("cancelled", "admin", "admin via the sweep service")
    assert body["progress"]["trial_states"] == {"terminated": 2}
    listed = {s["name"]: s["state"] for s in client.get("/sweeps", headers=AUTH).json()["sweeps"]}
    assert listed == {"k8s-sweep": "cancelled", "k8s-sweep-2": "succeeded"}

    resumed = client.post("/sweeps/k8s-sweep/resume", headers=AUTH)
    assert resumed.status_code == 200, resumed.text
    created = api_server.calls("POST")[-1]["body"]
    expected = render_rayjob(parse_spec(store.read_spec_text()), options)
    expected["metadata"]["annotations"] = {OWNER_ANNOTATION: "admin"}
    assert created == expected and "sweepctl run - --resume" in created["spec"]["entrypoint"]
    assert client.post("/sweeps/k8s-sweep/resume", headers=AUTH).status_code == 409  # pending: nothing to resume
    refused = client.delete("/sweeps/k8s-sweep/data?confirm=k8s-sweep", headers=AUTH)
    assert refused.status_code == 409 and "cancel it first" in refused.json()["detail"]

    # A failed RayJob still holds the name: the resume deletes it before creating the new one.
    _set_status(api_server, "k8s-sweep", jobDeploymentStatus="Failed", jobStatus="FAILED")
    before = len(api_server.requests)
    assert client.post("/sweeps/k8s-sweep/resume", headers=AUTH).status_code == 200
    assert [(r["method"], r["path"]) for r in api_server.requests[before:] if r["method"] != "GET"] == [
        ("DELETE", f"{RAYJOBS}/k8s-sweep"), ("POST", RAYJOBS)]
    assert api_server.objects[(NAMESPACE, "k8s-sweep")]["metadata"]["annotations"][OWNER_ANNOTATION] == "admin"

    # Delete: only an ended sweep, only with ?confirm=NAME; every object under its prefix, nothing else.
    _set_status(api_server, "k8s-sweep", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    objects = store.stored_objects()
    plan = client.get("/sweeps/k8s-sweep/data", headers=AUTH).json()
    assert plan == {"name": "k8s-sweep", "state": "succeeded", "prefix": f"s3://{bucket}/runs/k8s-sweep/",
                    "objects": len(objects), "bytes": sum(objects.values()), "deleted": False}
    assert client.delete("/sweeps/k8s-sweep/data?confirm=k8s-sweep-2", headers=AUTH).status_code == 422
    assert client.delete("/sweeps/k8s-sweep/data", headers=AUTH).status_code == 422
    assert store.stored_objects() == objects
    deleted = client.delete("/sweeps/k8s-sweep/data?confirm=k8s-sweep", headers=AUTH)
    assert deleted.status_code == 200 and deleted.json() == {**plan, "deleted": True}
    assert store.stored_objects() == {} and (NAMESPACE, "k8s-sweep") not in api_server.objects
    assert sibling.stored_objects() == sibling_objects
    assert client.get("/sweeps/k8s-sweep", headers=AUTH).status_code == 404
    assert [s["name"] for s in client.get("/sweeps", headers=AUTH).json()["sweeps"]] == ["k8s-sweep-2"]
    assert _submit(client).status_code == 201  # the name is free again


def test_a_local_storage_path_is_refused_before_anything_is_created(api_server, client):
    text = yaml.safe_dump({**BASE_SPEC, "name": "k8s-local", "storage": {"uri": "/data/runs"}})
    response = _submit(client, text)
    assert response.status_code == 422
    assert "do not share" in response.json()["detail"]["message"]
    assert api_server.calls("POST") == []


def test_the_owner_rides_on_the_rayjob_and_only_the_owner_or_an_admin_cancels(api_server, options, tmp_path):
    import hashlib

    tokens = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"}
    users_file = tmp_path / "tokens.yaml"
    users_file.write_text(yaml.safe_dump({"users": [
        {"name": name, "role": "submitter", "sha256": hashlib.sha256(token.encode()).hexdigest()}
        for name, token in tokens.items()]}))
    client = TestClient(create_app(_backend(api_server.url, options), token=TOKEN, tokens_file=users_file))

    def as_(user):
        return {"Authorization": f"Bearer {tokens[user]}"}

    created = client.post("/sweeps", content=SPEC_TEXT, headers={**as_("alice"), "Content-Type": "application/yaml"})
    assert created.status_code == 201 and created.json()["owner"] == "alice"
    rayjob = api_server.objects[(NAMESPACE, "k8s-sweep")]
    assert rayjob["metadata"]["annotations"][OWNER_ANNOTATION] == "alice"
    assert client.get("/sweeps/k8s-sweep", headers=as_("bob")).json()["owner"] == "alice"
    assert client.get("/sweeps", headers=as_("bob")).json()["sweeps"][0]["owner"] == "alice"

    refused = client.delete("/sweeps/k8s-sweep", headers=as_("bob"))
    assert refused.status_code == 403 and "submitted by user 'alice'" in refused.json()["detail"]
    assert api_server.calls("DELETE") == []
    # A RayJob made before the service had users (no annotation) is the admin's to cancel.
    del rayjob["metadata"]["annotations"][OWNER_ANNOTATION]
    assert client.delete("/sweeps/k8s-sweep", headers=as_("alice")).status_code == 403
    assert client.delete("/sweeps/k8s-sweep", headers=AUTH).status_code == 200
    # A name no sweep can have never reaches the API server.
    before = len(api_server.requests)
    assert client.get("/sweeps/..%2F..%2Fsecrets", headers=AUTH).status_code in (404, 422)
    assert len(api_server.requests) == before
