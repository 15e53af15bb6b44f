"""Who may do what, and what a hostile name can reach: the real app over a real LocalBackend.

- The auth matrix: EVERY route × {no token, wrong token, viewer, submitter on its own sweep,
  submitter on another user's sweep, admin, the single admin token of old}, against a table
  written out below.
- Path traversal: `..`, `%2e%2e`, `%2F`, absolute paths, 300-character names, a symlink out of
  the workdir, on every route, through a live uvicorn (raw request paths, as a tester sends them):
  only 404 or 422, and a decoy sweep.json outside the workdir naming a live decoy process (with
  the right start time and token: a perfect forgery) is never read, written or signalled.
- Process identity: a record in the workdir naming a live process is signalled only when pid,
  start time and token all match.

The sweeps' processes are `sleep 60` (started as LocalBackend starts `sweepctl run`: own session,
the process token in their environment); nothing here starts Ray.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from live_service import serve

from conftest import BASE_SPEC
from service.control.api import TRIAL_ID_PATTERN, ServiceConfigError, Users, create_app
from service.control.backends import LocalBackend, ProcessIdentity, _start_time
from service.core import storage
from service.core.record import (
    BETTER, EpochResult, Objective, RecordError, SegmentedLog, SweepStore, TrialRecord, TrialSummary, _safe_id, new_index,
)

USERS = {  # name: (role, token)
    "vera": ("viewer", "vera-token-" + "0" * 32),
    "sam": ("submitter", "sam-token-" + "1" * 32),
    "sue": ("submitter", "sue-token-" + "2" * 32),
    "ada": ("admin", "ada-token-" + "3" * 32),
}
SINGLE_TOKEN = "the-single-admin-token-" + "4" * 32
TRIAL = "t_00001"


def tokens_yaml(users: dict = USERS) -> str:
    return yaml.safe_dump({"users": [
        {"name": name, "role": role, "sha256": hashlib.sha256(token.encode()).hexdigest()}
        for name, (role, token) in users.items()]})


def bearer(token: str | None) -> dict:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def of(user: str) -> dict:
    return bearer(USERS[user][1])


def started(process: subprocess.Popen, token: str) -> subprocess.Popen:
    """``process`` once exec has set it up (Popen may return while its environ still reads empty)."""
    deadline = time.monotonic() + 5
    while not ProcessIdentity(process.pid, _start_time(process.pid) or -1, token).alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    return process


class SleepBackend(LocalBackend):
    """LocalBackend whose sweeps' processes are `sleep 60`, started exactly as it starts the real ones."""

    def _start(self, command, log_path, env):
        return super()._start(["sleep", "60"], log_path, env)

    def stop_all(self):
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


class World:
    """A service with four users and three sweeps: sam's and sue's running ones (each with a
    trial, its log and a best result in storage) and sue's cancelled one (resumable)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True)
        (root / "tokens.yaml").write_text(tokens_yaml())
        self.storage = root / "runs"
        self.backend = SleepBackend(root / "work" / "local", grace_seconds=1)
        self.app = create_app(self.backend, token=SINGLE_TOKEN, tokens_file=root / "tokens.yaml")
        self.client = TestClient(self.app)
        for user, name in (("sam", "sams-sweep"), ("sue", "sues-sweep"), ("sue", "sues-old")):
            assert self.submit(user, name).status_code == 201
            self.record_progress(name)
        assert self.client.delete("/sweeps/sues-old", headers=of("sue")).status_code == 200
        self.backend._processes["sues-old"].wait(timeout=10)  # ended: resumable (not while it still stops)

    def spec(self, name: str) -> str:
        return yaml.safe_dump({**BASE_SPEC, "name": name, "storage": {"uri": str(self.storage)}})

    def submit(self, user: str, name: str):
        return self.client.post("/sweeps", content=self.spec(name), headers={**of(user), "Content-Type": "application/yaml"})

    def record_progress(self, name: str) -> None:
        store = SweepStore(str(self.storage), name)
        best = TrialSummary(trial_id=TRIAL, status="running", config={"model.filters": 8}, epochs=1,
                            best=EpochResult(epoch=1, val_acc=0.9))
        index = new_index(name, Objective(metric="val_acc", mode="max"), max_epochs=2, num_trials=1, attempt=1)
        index.trial_states, index.best_trial, index.trials = {"running": 1}, TRIAL, [best]
        storage.write_text_atomic(store.index_uri, index.model_dump_json())
        storage.write_text_atomic(store.trial_record_uri(TRIAL), TrialRecord(**best.model_dump()).model_dump_json())
        log = SegmentedLog(store.trial_log_uri(TRIAL), attempt=1, stream="trial")
        log.write("epoch 1\n")
        log.close()

    def stop(self, name: str) -> None:
        """Cancel the sweep (as an admin) and wait for its process to end: then it may be resumed or deleted."""
        assert self.client.delete(f"/sweeps/{name}", headers=of("ada")).status_code in (200, 409)
        self.backend._processes[name].wait(timeout=10)

    def close(self):
        self.backend.stop_all()


@pytest.fixture
def make_world(tmp_path):
    worlds = []

    def make() -> World:
        world = World(tmp_path / f"world-{len(worlds)}")
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        world.close()


# ---------------------------------------------------------------------------- the auth matrix
WHO = ("no token", "wrong token", "viewer", "submitter, own sweep", "submitter, another's sweep", "admin",
       "single token")
# (token, the sweep the route is called on) per column; POST: own = a new sweep, another's = resubmitting
# sue's cancelled sweep (a resume); admin and the single token resume it too (an admin may).
CALLERS = {
    "no token": (None, "sams-sweep", "new-sweep"),
    "wrong token": ("not-a-token-" + "9" * 32, "sams-sweep", "new-sweep"),
    "viewer": (USERS["vera"][1], "sams-sweep", "new-sweep"),
    "submitter, own sweep": (USERS["sam"][1], "sams-sweep", "new-sweep"),
    "submitter, another's sweep": (USERS["sam"][1], "sues-sweep", "sues-old"),
    "admin": (USERS["ada"][1], "sams-sweep", "sues-old"),
    "single token": (SINGLE_TOKEN, "sams-sweep", "sues-old"),
}
EXPECTED = {  # route: status per column of WHO
    ("GET", "/healthz"):                               (200, 200, 200, 200, 200, 200, 200),
    ("GET", "/metrics"):                               (200, 200, 200, 200, 200, 200, 200),
    ("GET", "/openapi.json"):                          (200, 200, 200, 200, 200, 200, 200),
    ("GET", "/docs"):                                  (200, 200, 200, 200, 200, 200, 200),
    ("GET", "/sweeps"):                                (401, 401, 200, 200, 200, 200, 200),
    ("POST", "/sweeps"):                               (401, 401, 403, 201, 403, 201, 201),
    ("GET", "/sweeps/{name}"):                         (401, 401, 200, 200, 200, 200, 200),
    ("DELETE", "/sweeps/{name}"):                      (401, 401, 403, 200, 403, 200, 200),
    # on the sweep cancelled first (STOPPED_FIRST): resume it; delete its data (?confirm=NAME)
    ("POST", "/sweeps/{name}/resume"):                 (401, 401, 403, 200, 403, 200, 200),
    ("GET", "/sweeps/{name}/data"):                    (401, 401, 200, 200, 200, 200, 200),
    ("DELETE", "/sweeps/{name}/data"):                 (401, 401, 403, 200, 403, 200, 200),
    ("GET", "/sweeps/{name}/best"):                    (401, 401, 200, 200, 200, 200, 200),
    ("GET", "/sweeps/{name}/logs"):                    (401, 401, 200, 200, 200, 200, 200),
    ("GET", "/sweeps/{name}/trials"):                  (401, 401, 200, 200, 200, 200, 200),
    ("GET", "/sweeps/{name}/trials/{trial_id}"):       (401, 401, 200, 200, 200, 200, 200),
    ("GET", "/sweeps/{name}/trials/{trial_id}/logs"):  (401, 401, 200, 200, 200, 200, 200),
    # past the auth: 404 (the trial has no checkpoint; tests/service/test_checkpoint_route.py streams one)
    ("GET", "/sweeps/{name}/trials/{trial_id}/checkpoint"): (401, 401, 404, 404, 404, 404, 404),
    # The web pages (service/web/pages.py): without a session or a right token, to the login (303).
    ("GET", "/"):                                      (303, 303, 303, 303, 303, 303, 303),
    ("GET", "/ui/login"):                              (200, 200, 200, 200, 200, 200, 200),
    ("POST", "/ui/login"):                             (401, 401, 401, 401, 401, 401, 401),  # no token in the form
    ("POST", "/ui/logout"):                            (303, 303, 303, 303, 303, 303, 303),
    ("GET", "/ui/static/{asset}"):                     (200, 200, 200, 200, 200, 200, 200),
    ("GET", "/ui/"):                                   (303, 303, 200, 200, 200, 200, 200),
    ("GET", "/ui/sweeps/{name}"):                      (303, 303, 200, 200, 200, 200, 200),
    ("GET", "/ui/data/sweeps/{name}"):                 (303, 303, 200, 200, 200, 200, 200),
    ("GET", "/ui/sweeps/{name}/trials/{trial_id}"):    (303, 303, 200, 200, 200, 200, 200),
    ("GET", "/ui/data/sweeps/{name}/trials/{trial_id}"): (303, 303, 200, 200, 200, 200, 200),
    ("GET", "/ui/sweeps/{name}/report"):               (303, 303, 404, 404, 404, 404, 404),  # none written
}
MUTATING = {("POST", "/sweeps"), ("DELETE", "/sweeps/{name}"), ("POST", "/sweeps/{name}/resume"),
            ("DELETE", "/sweeps/{name}/data")}
STOPPED_FIRST = {("POST", "/sweeps/{name}/resume"), ("DELETE", "/sweeps/{name}/data")}


def _every_route(app) -> set[tuple[str, str]]:
    routes = set()
    for route in app.routes:
        methods = route.methods - {"HEAD"} if getattr(route, "methods", None) else set()
        routes |= {(method, route.path) for method in methods}
    return routes


def test_every_route_answers_each_kind_of_caller_as_the_table_says(make_world):
    shared = make_world()
    assert _every_route(shared.app) == set(EXPECTED), "a route was added or removed: extend the table"
    wrong = []
    for (method, template), expected in EXPECTED.items():
        for who, want in zip(WHO, expected):
            world = make_world() if (method, template) in MUTATING else shared
            token, sweep, submitted = CALLERS[who]
            if (method, template) in STOPPED_FIRST:
                world.stop(sweep)
            path = template.replace("{name}", sweep).replace("{trial_id}", TRIAL).replace("{asset}", "ui.css")
            if template == "/sweeps/{name}/data" and method == "DELETE":
                path += f"?confirm={sweep}"
            if method == "POST":
                response = world.client.post(path, content=world.spec(submitted), follow_redirects=False,
                                             headers={**bearer(token), "Content-Type": "application/yaml"})
            else:
                response = world.client.request(method, path, headers=bearer(token), follow_redirects=False)
            if response.status_code != want:
                wrong.append((method, template, who, want, response.status_code, response.text[:200]))
            elif want == 401 and not template.startswith("/ui/"):  # the login page's 401 is a page
                assert response.headers["www-authenticate"] == "Bearer"
            elif want == 403:
                assert "may not" in response.json()["detail"]
    assert wrong == []


def test_the_submitter_is_the_owner_shown_by_status_list_and_kept_by_a_resume(make_world):
    world = make_world()
    client = world.client
    assert client.get("/sweeps/sams-sweep", headers=of("vera")).json()["owner"] == "sam"
    listed = {s["name"]: s["owner"] for s in client.get("/sweeps", headers=of("vera")).json()["sweeps"]}
    assert listed == {"sams-sweep": "sam", "sues-sweep": "sue", "sues-old": "sue"}
    record = json.loads((world.backend.workdir / "sams-sweep" / "sweep.json").read_text())
    assert record["owner"] == "sam"
    # sue resumes her cancelled sweep herself; an admin may too, and it stays sue's
    resumed = world.submit("sue", "sues-old")
    assert resumed.status_code == 201 and resumed.json()["owner"] == "sue" and resumed.json()["state"] == "running"
    assert client.delete("/sweeps/sues-old", headers=of("ada")).status_code == 200
    again = world.submit("ada", "sues-old")
    if again.status_code == 409:  # its process was still stopping: a resume waits for it to end
        assert "still stopping" in again.json()["detail"]
        world.backend._processes["sues-old"].wait(timeout=10)
        again = world.submit("ada", "sues-old")
    assert again.status_code == 201 and again.json()["owner"] == "sue"
    refused = world.submit("sam", "sues-old")
    assert refused.status_code == 409  # running again: nothing to resume, whoever asks


def test_a_forbidden_call_changes_nothing(make_world):
    world = make_world()
    before = world.client.get("/sweeps/sues-sweep", headers=of("ada")).json()
    assert world.client.delete("/sweeps/sues-sweep", headers=of("sam")).status_code == 403
    assert world.client.delete("/sweeps/sues-sweep", headers=of("vera")).status_code == 403
    assert world.client.get("/sweeps/sues-sweep", headers=of("ada")).json() == before
    assert not (world.backend.workdir / "sues-sweep" / "cancelled").exists()
    assert world.submit("vera", "vera-sweep").status_code == 403
    assert not (world.backend.workdir / "vera-sweep").exists()
    # sue's cancelled sweep: sam may neither resume it nor delete its data
    stored = SweepStore(str(world.storage), "sues-old").stored_objects()
    assert world.client.post("/sweeps/sues-old/resume", headers=of("sam")).status_code == 403
    assert world.client.delete("/sweeps/sues-old/data?confirm=sues-old", headers=of("sam")).status_code == 403
    assert world.client.delete("/sweeps/sues-old/data?confirm=sues-old", headers=of("vera")).status_code == 403
    assert world.client.get("/sweeps/sues-old", headers=of("ada")).json()["state"] == "cancelled"
    assert SweepStore(str(world.storage), "sues-old").stored_objects() == stored != {}
    assert (world.backend.workdir / "sues-old" / "sweep.json").exists()


# ---------------------------------------------------------------------------- the tokens file
def test_the_tokens_file_is_hashes_names_and_roles_and_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text(tokens_yaml())
    assert USERS["sam"][1] not in path.read_text()  # only hashes are stored
    users = Users(path, SINGLE_TOKEN)
    assert users.find(USERS["sam"][1]).name == "sam" and users.find(USERS["sam"][1]).role == "submitter"
    assert users.find(SINGLE_TOKEN).name == "admin" and users.find(SINGLE_TOKEN).role == "admin"
    assert users.find("") is None and users.find(USERS["sam"][1][:-1]) is None
    assert users.find(hashlib.sha256(USERS["sam"][1].encode()).hexdigest()) is None  # the hash is no token

    path.write_text(tokens_yaml({"vera": USERS["vera"], "sam": ("admin", USERS["sam"][1])}))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert users.find(USERS["sam"][1]).role == "admin" and users.find(USERS["sue"][1]) is None
    path.write_text("users: [{name: x, role: root, sha256: zz}]\n")  # broken: the users read before stay
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert users.find(USERS["sam"][1]).role == "admin"


@pytest.mark.parametrize("text, problem", [
    ("users: [{name: a, role: root, sha256: " + "a" * 64 + "}]", "role"),
    ("users: [{name: a, role: viewer, sha256: abc}]", "sha256"),
    ("users: [{name: a, role: viewer, token: secret}]", "token"),
    ("[]", "users"),
    ("users: [{name: a, role: viewer, sha256: " + "a" * 64 + "}, {name: b, role: admin, sha256: " + "A" * 64 + "}]",
     "listed twice"),
    ("users: [{name: a, role: viewer, sha256: " + "a" * 64 + "}, {name: a, role: admin, sha256: " + "b" * 64 + "}]",
     "two roles"),
    ("users: [{name: '../x', role: viewer, sha256: " + "a" * 64 + "}]", "name"),
])
def test_a_bad_tokens_file_stops_the_service_at_start_saying_why(tmp_path, text, problem):
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(ServiceConfigError, match=problem):
        create_app(LocalBackend(tmp_path / "local"), token="", tokens_file=path)
    with pytest.raises(ServiceConfigError, match="cannot read the tokens file"):
        create_app(LocalBackend(tmp_path / "local"), token="", tokens_file=tmp_path / "missing.yaml")


def test_the_single_token_of_old_still_works_alone_as_the_admin(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_SERVICE_TOKEN", SINGLE_TOKEN)
    monkeypatch.delenv("SWEEP_SERVICE_TOKENS_FILE", raising=False)
    client = TestClient(create_app(LocalBackend(tmp_path / "local")))
    assert client.get("/sweeps", headers=bearer(SINGLE_TOKEN)).status_code == 200
    assert client.get("/sweeps", headers=bearer(USERS["ada"][1])).status_code == 401


# ---------------------------------------------------------------------------- hostile names
class Decoy:
    """What must stay untouched outside the workdir: a live `sleep 60` and two complete, valid
    local-backend records naming it, one in the workdir's parent (what `..` reaches) and one in
    <root>/outside/victim. The records carry its real start time and the token in its
    environment, so a request that reached one would be able to signal it."""

    SECRET = "DECOY-SECRET-LOG-LINE"

    def __init__(self, root: Path, workdir: Path):
        token = secrets.token_hex(16)
        self.process = started(subprocess.Popen(["sleep", "60"], env={**os.environ, LocalBackend.TOKEN_ENV: token},
                                                start_new_session=True), token)
        record = {"name": "victim", "pid": self.process.pid, "start_time": _start_time(self.process.pid),
                  "process_token": token, "owner": "ada", "created": "2030-01-01T00:00:00+00:00",
                  "storage_uri": str(root / "outside" / "storage")}
        self.homes = [workdir.parent, root / "outside" / "victim"]
        for home in self.homes:
            home.mkdir(parents=True, exist_ok=True)
            (home / "sweep.json").write_text(json.dumps({**record, "name": home.name}))
            (home / "process.log").write_text(self.SECRET + "\n")
            (home / "spec.yaml").write_text(yaml.safe_dump({**BASE_SPEC, "name": "victim"}))
        self.root = root
        self.snapshot = self._files()
        assert ProcessIdentity.of(record).alive()  # the forgery is perfect: only confinement protects it

    def _files(self) -> dict[str, bytes]:
        files = {}
        for home in self.homes:
            for path in sorted(home.iterdir()):
                if path.is_file() and not path.is_symlink():
                    files[str(path)] = path.read_bytes()
        return files

    def untouched(self) -> bool:
        return self.process.poll() is None and self._files() == self.snapshot

    def kill(self):
        self.process.kill()
        self.process.wait()


def _raw(url: str, method: str, path: str, token: str, body: str | None = None) -> tuple[int, str]:
    """One request with ``path`` sent byte for byte (no client normalizes its dots or escapes)."""
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/yaml"
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    text = response.read().decode(errors="replace")
    connection.close()
    return response.status, text


def hostile_names(root: Path) -> list[str]:
    victim = str(root / "outside" / "victim")
    return [
        "..", "%2e%2e", "%2E%2E", ".%2e", ".", "%2e",
        "..%2F..%2Foutside%2Fvictim", "%2e%2e%2f%2e%2e%2foutside%2fvictim", "..%5c..%5coutside",
        "%2F", "%2F%2F", urllib.parse.quote(victim, safe=""), urllib.parse.quote("/etc/passwd", safe=""),
        "a" * 300, "a" * 41, "x" * 5000,
        "evil",  # a valid name: a symlink in the workdir pointing outside
        "victim",  # a valid name that is not in the workdir
        "Sams-Sweep", "-sams", "sams-", "sams%00sweep", "sams%0asweep", "sams-sweep%0a", "%20sams-sweep",
        "sams_sweep", "sams.sweep", "%C3%A9t%C3%A9",
    ]


ROUTES_WITH_A_NAME = [
    ("GET", "/sweeps/{name}"), ("DELETE", "/sweeps/{name}"), ("GET", "/sweeps/{name}/best"),
    ("POST", "/sweeps/{name}/resume"), ("GET", "/sweeps/{name}/data"), ("DELETE", "/sweeps/{name}/data?confirm=sams-sweep"),
    ("GET", "/sweeps/{name}/logs"), ("GET", "/sweeps/{name}/trials"),
    ("GET", "/sweeps/{name}/trials/" + TRIAL), ("GET", "/sweeps/{name}/trials/" + TRIAL + "/logs"),
    ("GET", "/sweeps/{name}/trials/" + TRIAL + "/checkpoint"),
    ("GET", "/ui/sweeps/{name}"), ("GET", "/ui/data/sweeps/{name}"), ("GET", "/ui/sweeps/{name}/report"),
    ("GET", "/ui/sweeps/{name}/trials/" + TRIAL), ("GET", "/ui/data/sweeps/{name}/trials/" + TRIAL),
]


def test_hostile_names_on_every_route_are_404_or_422_and_nothing_outside_is_touched(make_world):
    world = make_world()
    root = world.root
    decoy = Decoy(root, world.backend.workdir)
    (world.backend.workdir / "evil").symlink_to(root / "outside" / "victim", target_is_directory=True)
    admin = USERS["ada"][1]
    # every route that takes a name
    assert {(m, p.replace(TRIAL, "{trial_id}").split("?")[0]) for m, p in ROUTES_WITH_A_NAME} == {
        (m, p) for m, p in _every_route(world.app) if "{name}" in p}
    refused = []
    try:
        with serve(world.app) as url:
            requests = [(method, template.replace("{name}", name), None)
                        for name in hostile_names(root) for method, template in ROUTES_WITH_A_NAME]
            # trial ids that try to leave the sweep's directory
            for trial in ("..", "%2e%2e", "..%2F..%2F..", "%2Fetc%2Fpasswd", "a" * 300, "."):
                requests += [("GET", f"/sweeps/sams-sweep/trials/{trial}", None),
                             ("GET", f"/sweeps/sams-sweep/trials/{trial}/logs", None),
                             ("GET", f"/sweeps/sams-sweep/trials/{trial}/checkpoint", None),
                             ("GET", f"/ui/sweeps/sams-sweep/trials/{trial}", None),
                             ("GET", f"/ui/data/sweeps/sams-sweep/trials/{trial}", None)]
            # a spec naming a path, and an override doing the same
            for name in ("..", "../outside/victim", "/etc/passwd", "a" * 300, "evil/../..", "victim\n"):
                requests.append(("POST", "/sweeps", yaml.safe_dump({**BASE_SPEC, "name": name})))
            requests.append(("POST", "/sweeps?set=name=..", yaml.safe_dump(BASE_SPEC)))
            requests.append(("POST", "/sweeps?set=name=%2e%2e%2Fvictim", yaml.safe_dump(BASE_SPEC)))
            for method, path, body in requests:
                status, text = _raw(url, method, path, admin, body)
                if status not in (404, 422) or Decoy.SECRET in text or not decoy.untouched():
                    refused.append((method, path[:80], status, text[:160]))
    finally:
        alive = decoy.process.poll() is None
        decoy.kill()
    assert refused == []
    assert alive
    assert not (root / "outside" / "victim" / "cancelled").exists() and not (world.backend.workdir.parent / "cancelled").exists()
    # The sweeps of the service are as they were: nothing cancelled by a name that only looked like theirs.
    assert world.client.get("/sweeps/sams-sweep", headers=of("ada")).json()["state"] == "running"
    names = [s["name"] for s in world.client.get("/sweeps", headers=of("ada")).json()["sweeps"]]
    assert names == ["sams-sweep", "sues-old", "sues-sweep"]  # the symlink "evil" is not listed


def test_a_bad_name_is_a_422_saying_the_rule_and_never_a_500(make_world):
    world = make_world()
    for name in ("a" * 300, "UPPER", "%2e%2e", "x" * 41, "%00", "a%0A"):
        response = world.client.get(f"/sweeps/{name}", headers=of("vera"))
        assert response.status_code == 422, (name, response.text)
        assert response.json()["detail"][0]["loc"] == ["path", "name"]


def test_the_trial_id_pattern_is_record_pys_rule():
    samples = ["t_00001", "abc.def-1", ".", "..", "...", ".a", "..a", "a" * 128, "a" * 129, "", "a/b", "a b",
               "é", "_", "-", ".-", "..-", "a..", "x" * 127 + "."]
    import re

    for sample in samples:
        try:
            _safe_id(sample)
            accepted = True
        except RecordError:
            accepted = False
        assert (re.fullmatch(TRIAL_ID_PATTERN, sample) is not None) == accepted, sample


# ---------------------------------------------------------------------------- process identity
def test_a_process_is_signalled_only_when_pid_start_time_and_token_all_match(tmp_path):
    backend = SleepBackend(tmp_path / "local", grace_seconds=1)
    token = secrets.token_hex(16)
    target = started(subprocess.Popen(["sleep", "60"], env={**os.environ, LocalBackend.TOKEN_ENV: token},
                                      start_new_session=True), token)
    try:
        start = _start_time(target.pid)
        forged = {
            "wrong start time": {"pid": target.pid, "start_time": start + 1, "process_token": token},
            "wrong token": {"pid": target.pid, "start_time": start, "process_token": secrets.token_hex(16)},
            "no token": {"pid": target.pid, "start_time": start},
            "pid 0 (our own process group)": {"pid": 0, "start_time": start, "process_token": token},
            "pid -1 (every process)": {"pid": -1, "start_time": start, "process_token": token},
            "pid as text": {"pid": str(target.pid), "start_time": start, "process_token": token},
        }
        for why, identity in forged.items():
            home = backend.workdir / f"forged-{len(os.listdir(backend.workdir))}"
            home.mkdir()
            (home / "sweep.json").write_text(json.dumps({
                "name": home.name, **identity, "owner": "ada", "created": "2030-01-01T00:00:00+00:00",
                "storage_uri": str(tmp_path / "runs")}))
            assert backend.get(home.name).state == "failed", why  # not running: not provably ours
            with pytest.raises(Exception) as refused:
                backend.cancel(home.name)
            assert getattr(refused.value, "status", None) == 409, why
            assert target.poll() is None, why
            assert not (home / "cancelled").exists(), why
        # The control: the same record with all three right is ours, and cancel signals it.
        home = backend.workdir / "the-real-one"
        home.mkdir()
        (home / "sweep.json").write_text(json.dumps({
            "name": "the-real-one", "pid": target.pid, "start_time": start, "process_token": token,
            "owner": "ada", "created": "2030-01-01T00:00:00+00:00", "storage_uri": str(tmp_path / "runs")}))
        assert backend.get("the-real-one").state == "running"
        assert backend.cancel("the-real-one").state == "cancelled"
        assert target.wait(timeout=10) == -signal.SIGTERM
    finally:
        if target.poll() is None:
            target.kill()
        target.wait()


def test_a_sweep_started_by_the_backend_records_its_identity_and_cancel_ends_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_SERVICE_TOKEN", SINGLE_TOKEN)
    monkeypatch.delenv("SWEEP_SERVICE_TOKENS_FILE", raising=False)
    backend = SleepBackend(tmp_path / "local", grace_seconds=1)
    app = create_app(backend)
    client = TestClient(app)
    spec = yaml.safe_dump({**BASE_SPEC, "name": "mine", "storage": {"uri": str(tmp_path / "runs")}})
    assert client.post("/sweeps", content=spec, headers=bearer(SINGLE_TOKEN)).status_code == 201
    record = json.loads((backend.workdir / "mine" / "sweep.json").read_text())
    assert set(record) >= {"pid", "start_time", "process_token", "owner"} and record["owner"] == "admin"
    environ = Path(f"/proc/{record['pid']}/environ").read_bytes().split(b"\0")
    assert f"{LocalBackend.TOKEN_ENV}={record['process_token']}".encode() in environ
    assert not any(SINGLE_TOKEN.encode() in entry for entry in environ)  # the API's own token never reaches it
    assert client.delete("/sweeps/mine", headers=bearer(SINGLE_TOKEN)).json()["state"] == "cancelled"
    assert backend._processes["mine"].wait(timeout=10) == -signal.SIGTERM


def test_sweepctl_shows_the_owner_and_the_servers_refusal(make_world, tmp_path):
    from live_service import sweepctl

    world = make_world()
    with serve(world.app) as url:
        status = sweepctl("status", "sams-sweep", server=url, token=USERS["vera"][1], home=tmp_path)
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith("sams-sweep: running (created ") and " by sam)" in status.stdout
        listed = sweepctl("list", server=url, token=USERS["vera"][1], home=tmp_path)
        lines = listed.stdout.splitlines()
        assert lines[0].split() == ["NAME", "STATE", "OWNER", "CREATED"]
        assert {tuple(line.split()[:3]) for line in lines[1:]} == {
            ("sams-sweep", "running", "sam"), ("sues-sweep", "running", "sue"), ("sues-old", "cancelled", "sue")}
        refused = sweepctl("cancel", "sues-sweep", server=url, token=USERS["sam"][1], home=tmp_path)
        assert refused.returncode == 2 and "(HTTP 403)" in refused.stderr and "submitted by user 'sue'" in refused.stderr
        cancelled = sweepctl("cancel", "sams-sweep", server=url, token=USERS["sam"][1], home=tmp_path)
        assert cancelled.returncode == 0 and cancelled.stdout.strip() == "sams-sweep: cancelled", cancelled.stderr
        assert world.client.get("/sweeps/sams-sweep", headers=of("vera")).json()["cancelled_by"] == "sam via the sweep service"
        spec = tmp_path / "new.yaml"
        spec.write_text(world.spec("sams-new"))
        submitted = sweepctl("submit", str(spec), server=url, token=USERS["sam"][1], home=tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        assert "submitted sams-new: running (1 trials) on " in submitted.stdout and " as sam" in submitted.stdout


# ---------------------------------------------------------------------------- trials, sorted
def test_the_trials_route_sorts_by_every_metric_that_sweepctl_sorts_by_without_a_server(make_world):
    world = make_world()
    store = SweepStore(str(world.storage), "sams-sweep")
    index = store.read_index()
    # Three trials: the most accurate is the largest and the slowest.
    index.trials = [TrialSummary(trial_id=f"t_0000{i}", status="terminated", config={"model.filters": 8 * 2 ** i},
                                 epochs=1, best=EpochResult(epoch=1, val_acc=acc, params=params, inference_ms=ms))
                    for i, (acc, params, ms) in enumerate([(0.8, 100, 0.5), (0.9, 400, 0.9), (0.7, 200, 0.1)])]
    storage.write_text_atomic(store.index_uri, index.model_dump_json())

    def order(sort: str) -> list[str]:
        answer = world.client.get(f"/sweeps/sams-sweep/trials?sort={sort}", headers=of("vera"))
        assert answer.status_code == 200, (sort, answer.text)
        return [t["trial_id"] for t in answer.json()["trials"]]

    assert order("objective") == order("val_acc") == ["t_00001", "t_00000", "t_00002"]
    assert order("params") == ["t_00000", "t_00002", "t_00001"]  # fewest first
    assert order("inference_ms") == ["t_00002", "t_00000", "t_00001"]  # fastest first
    for metric in BETTER:  # every metric the CLI's own sort takes (record.sort_trials)
        order(metric)
    refused = world.client.get("/sweeps/sams-sweep/trials?sort=lr", headers=of("vera"))  # no direction
    assert refused.status_code == 422
