"""The web pages' contract without a browser: sessions, CSRF, redirects, what the pages draw.
(The real-browser tests are tests/web/test_browser.py.)"""

from __future__ import annotations

import hashlib
import re

import pytest
import yaml
from fastapi.testclient import TestClient

from service.control.api import User, create_app
from service.control.backends import LocalBackend, StorageBackend
from service.core import storage
from service.core.record import EpochResult, Objective, RecordWriter, SweepStore, new_index, trials_body
from service.web.pages import asha_rungs, best_so_far, sweep_view, RecordCache

TOKEN = "web-t0ken"
FORM = {"content-type": "application/x-www-form-urlencoded"}


def write_sweep(root, name="web", status="running", epochs=(3, 1)) -> SweepStore:
    """A sweep record written by the driver's own RecordWriter: trial k ran epochs[k] epochs."""
    store = SweepStore(str(root), name)
    index = new_index(name, Objective(metric="val_acc", mode="max"), max_epochs=4, num_trials=len(epochs), attempt=1)
    writer = RecordWriter(store, index)
    for k, count in enumerate(epochs):
        record = writer.trial(f"t{k}", {"optimizer.lr": 10.0 ** -(k + 2), "model.filters": 8 * (k + 1)})
        writer.set_status(record, "running")
        for epoch in range(1, count + 1):
            writer.add_result(record, EpochResult(epoch=epoch, val_acc=0.3 + 0.1 * epoch + 0.05 * k, epoch_seconds=2.0))
        if status != "running":
            writer.set_status(record, "terminated")
        record.started_at = index.started_at
        writer.changed(record)  # its trial.json, as the driver writes it after each result
    storage.write_text_atomic(store.spec_uri, yaml.safe_dump({"scheduler": {"name": "asha", "grace_period": 1,
                                                                            "reduction_factor": 2}}))
    assert writer.write_index(status, wall_seconds=10.0)
    return store


@pytest.fixture
def runs(tmp_path):
    write_sweep(tmp_path / "runs")
    return tmp_path / "runs"


def logged_in(app) -> tuple[TestClient, str]:
    client = TestClient(app)
    answer = client.post("/ui/login", content=f"token={TOKEN}&next=/ui/", headers=FORM, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
    page = client.get("/ui/")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    return client, csrf


def test_pages_without_a_session_redirect_to_login_and_the_api_answers_401(runs):
    client = TestClient(create_app(StorageBackend(str(runs)), token=TOKEN))
    for path in ("/ui/", "/ui/sweeps/web", "/ui/sweeps/web/trials/t0", "/ui/data/sweeps/web"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == f"/ui/login?next={path}"
    assert client.get("/sweeps").status_code == 401
    assert client.get("/sweeps/web/trials").status_code == 401
    assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200


def test_a_wrong_token_gets_no_session_and_the_right_one_an_httponly_strict_cookie(runs):
    client = TestClient(create_app(StorageBackend(str(runs)), token=TOKEN))
    wrong = client.post("/ui/login", content="token=nope&next=/ui/", headers=FORM, follow_redirects=False)
    assert wrong.status_code == 401 and "wrong token" in wrong.text and "set-cookie" not in wrong.headers
    right = client.post("/ui/login", content=f"token={TOKEN}&next=/ui/sweeps/web", headers=FORM, follow_redirects=False)
    cookie = right.headers["set-cookie"]
    assert right.status_code == 303 and right.headers["location"] == "/ui/sweeps/web"
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert TOKEN not in cookie and TOKEN not in right.headers["location"]
    assert client.get("/ui/sweeps/web").status_code == 200
    assert client.get("/sweeps/web/trials").status_code == 200  # the API takes the session too
    secure = TestClient(create_app(StorageBackend(str(runs)), token=TOKEN, secure_cookies=True), base_url="https://x")
    assert "Secure" in secure.post("/ui/login", content=f"token={TOKEN}", headers=FORM, follow_redirects=False).headers["set-cookie"]


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/sweeps", "/\\evil.example"])
def test_the_login_never_redirects_off_the_pages(runs, target):
    client = TestClient(create_app(StorageBackend(str(runs)), token=TOKEN))
    answer = client.post("/ui/login", content=f"token={TOKEN}&next={target}", headers=FORM, follow_redirects=False)
    assert answer.headers["location"] == "/ui/"


def test_a_login_posted_from_another_sites_page_is_refused(runs):
    client = TestClient(create_app(StorageBackend(str(runs)), token=TOKEN))
    forged = client.post("/ui/login", content=f"token={TOKEN}", follow_redirects=False,
                         headers={**FORM, "Origin": "https://evil.example"})
    assert forged.status_code == 403 and "set-cookie" not in forged.headers
    ours = client.post("/ui/login", content=f"token={TOKEN}", follow_redirects=False,
                       headers={**FORM, "Origin": "http://testserver"})
    assert ours.status_code == 303 and "sweep_session=" in ours.headers["set-cookie"]


def test_a_state_change_from_a_browser_session_needs_the_csrf_token(tmp_path):
    backend = LocalBackend(tmp_path / "service")
    client, csrf = logged_in(create_app(backend, token=TOKEN))
    refused = client.delete("/sweeps/nothing-here")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    # With the page's token the request reaches the backend (which knows no such sweep).
    assert client.delete("/sweeps/nothing-here", headers={"X-CSRF-Token": csrf}).status_code == 404
    assert client.delete("/sweeps/nothing-here", headers={"X-CSRF-Token": csrf + "x"}).status_code == 403
    # Logging out needs it too; with it the session ends.
    client.post("/ui/logout", content="csrf=wrong", headers=FORM)
    client.cookies.set("sweep_session", client.cookies.get("sweep_session") or "")
    assert client.post("/ui/logout", content=f"csrf={csrf}", headers=FORM, follow_redirects=False).status_code == 303
    assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_removing_a_token_from_the_tokens_file_ends_its_sessions(runs, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(yaml.safe_dump({"users": [{"name": "alice", "role": "viewer", "sha256": digest}]}))
    client, _ = logged_in(create_app(StorageBackend(str(runs)), token="", tokens_file=tokens))
    assert "alice (viewer)" in client.get("/ui/").text
    other = hashlib.sha256(b"another").hexdigest()
    tokens.write_text(yaml.safe_dump({"users": [{"name": "bob", "role": "viewer", "sha256": other}]}))
    assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_a_viewer_sees_no_cancel_button_and_may_not_cancel(runs, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"users": [
        {"name": "vera", "role": "viewer", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]}))
    client, csrf = logged_in(create_app(LocalBackend(tmp_path / "svc"), token="", tokens_file=tokens))
    assert client.delete("/sweeps/web", headers={"X-CSRF-Token": csrf}).status_code == 403


def test_sweepctl_ui_mode_needs_no_login_and_changes_nothing(runs):
    client = TestClient(create_app(StorageBackend(str(runs)), token="", anonymous=User("local", "viewer")))
    page = client.get("/ui/sweeps/web")
    assert page.status_code == 200 and "read-only" in page.text and 'id="cancel"' not in page.text
    assert client.get("/sweeps").json()["sweeps"][0]["name"] == "web"
    assert client.delete("/sweeps/web").status_code == 403  # a viewer


def test_the_sweep_data_is_the_records_trials_body_with_curves_of_the_best(runs):
    client = TestClient(create_app(StorageBackend(str(runs)), token="", anonymous=User("local", "viewer")))
    view = client.get("/ui/data/sweeps/web").json()
    store = SweepStore(str(runs), "web")
    index = store.read_index()
    assert view["trials"] == trials_body(index)["trials"]
    assert view["index"]["best_trial"] == index.best_trial == "t0"  # 3 epochs beat 1 (+0.05)
    assert view["index"]["epochs_run"] == 4 and view["index"]["epoch_budget"] == 8
    assert set(view["curves"]) == {"t0", "t1"} and view["curves"]["t0"]["epoch"] == [1, 2, 3]
    assert view["config_keys"] == ["model.filters", "optimizer.lr"]
    assert view["scheduler"] == "asha" and view["rungs"] == [1, 2]


def test_best_so_far_only_improves_and_asha_rungs_follow_the_spec(tmp_path):
    store = write_sweep(tmp_path / "runs", epochs=(3, 2))
    index = store.read_index()
    records = RecordCache().read(store, index, [t.trial_id for t in index.trials])
    curve = best_so_far(index, records)
    assert curve["best"] == sorted(curve["best"]) and curve["best"][-1] == index.best.best.val_acc
    assert curve["minutes"] == sorted(curve["minutes"])
    assert asha_rungs("scheduler: {name: asha, grace_period: 2, reduction_factor: 3}", 20) == [2, 6, 18]
    assert asha_rungs("scheduler: {name: fifo}", 20) == []


def test_ended_trials_are_read_once_while_a_page_polls(tmp_path):
    store = write_sweep(tmp_path / "runs", status="finished")
    reads = []
    original = store.read_trial
    store.read_trial = lambda trial_id: reads.append(trial_id) or original(trial_id)
    cache = RecordCache()
    info = StorageBackend(str(tmp_path / "runs")).get("web")
    for _ in range(5):
        sweep_view(store, info, cache)
    assert sorted(reads) == ["t0", "t1"]  # five polls, each ended trial read once


def test_assets_come_from_us_and_nothing_else_is_served(runs):
    client = TestClient(create_app(StorageBackend(str(runs)), token="", anonymous=User("local", "viewer")))
    plotly = client.get("/ui/static/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    for asset in ("ui.js", "sweep.js", "trial.js", "ui.css"):
        assert client.get(f"/ui/static/{asset}").status_code == 200
    for bad in ("..%2Fpages.py", ".hidden", "nope.js"):
        assert client.get(f"/ui/static/{bad}").status_code == 404
    page = client.get("/ui/sweeps/web")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r'(src|href)="(https?:)?//', page.text)  # no asset from elsewhere
