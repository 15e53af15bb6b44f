"""GET /sweeps/{name}/trials/{id}/checkpoint and `sweepctl pull --server`: the real app (TestClient,
and a live uvicorn), real storage (local, and moto's S3 server over HTTP), no Ray, no torch.

The checkpoints are laid out as the trainer writes them (service/core/checkpoint.py: state.pt,
spec.json, the sha256 manifest); state.pt is opaque bytes to everything here, and larger than
SMALL_FILE_BYTES so it streams in several chunks, verified as it goes (both sizes made small here).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from live_service import REPO, serve

from conftest import BASE_SPEC, point_aws_at
from service.cli import main as sweepctl_main
from service.control.api import create_app
from service.control.backends import StorageBackend
from service.core import checkpoint as checkpoint_format
from service.core import storage
from service.core.record import EpochResult, Objective, SweepStore, TrialSummary, new_index
from service.core.spec import SweepSpec

SWEEP = "handoff"
BEST, OTHER, BARE = "t_00001", "t_00002", "t_00003"  # BARE: no checkpoint
TOKENS = {"viewer": "viewer-token-" + "0" * 32, "admin": "admin-token-" + "1" * 32}
# Small chunks keep the test quick on the same code path: state.pt is above SMALL_FILE_BYTES, so
# it streams in chunks (three, the last a partial one), verified as it goes.
CHUNK = 64 * 1024  # bytes
STATE_BYTES = 2 * CHUNK + 12_345


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    monkeypatch.setattr(checkpoint_format, "TAR_CHUNK_BYTES", CHUNK)
    monkeypatch.setattr(checkpoint_format, "SMALL_FILE_BYTES", CHUNK)


def write_sweep(storage_uri: str, scratch: Path) -> dict[str, str]:
    """A finished sweep of three trials in ``storage_uri``: two with a checkpoint, one without.
    Returns each checkpoint's URI by trial id."""
    store = SweepStore(storage_uri, SWEEP)
    spec = SweepSpec.model_validate({**BASE_SPEC, "name": SWEEP, "storage": {"uri": storage_uri}})
    uris, trials = {}, []
    for n, trial_id in enumerate((BEST, OTHER)):
        local = scratch / trial_id
        local.mkdir(parents=True)
        (local / checkpoint_format.STATE).write_bytes(os.urandom(STATE_BYTES - n))
        (local / checkpoint_format.SPEC).write_text(spec.model_dump_json(indent=2))
        checkpoint_format.write_manifest(local, 2, {"val_acc": 0.9 - n / 10, "val_loss": 0.3})
        uris[trial_id] = store.path(trial_id, "checkpoint_000001")
        for f in local.iterdir():
            storage.write_bytes_atomic(storage.join(uris[trial_id], f.name), f.read_bytes())
        trials.append(TrialSummary(trial_id=trial_id, status="terminated", config={"model.filters": 8 * (n + 1)},
                                   epochs=2, best=EpochResult(epoch=2, val_acc=0.9 - n / 10), checkpoint=uris[trial_id]))
    trials.append(TrialSummary(trial_id=BARE, status="error", config={"model.filters": 32}))
    index = new_index(SWEEP, Objective(metric="val_acc", mode="max"), max_epochs=2, num_trials=3, attempt=1)
    index.status, index.best_trial, index.trials = "finished", BEST, trials
    index.trial_states = {"terminated": 2, "error": 1}
    storage.write_text_atomic(store.index_uri, index.model_dump_json())
    return uris


def tokens_file(folder: Path) -> Path:
    path = folder / "tokens.yaml"
    path.write_text(yaml.safe_dump({"users": [
        {"name": role, "role": role, "sha256": hashlib.sha256(token.encode()).hexdigest()}
        for role, token in TOKENS.items()]}))
    return path


def bearer(role: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def members(body: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


# ---------------------------------------------------------------------------- the route, local storage
@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("route")
    runs = storage.normalize(str(root / "runs"))  # as the record writes paths: absolute, resolved
    uris = write_sweep(runs, root / "scratch")
    app = create_app(StorageBackend(runs), tokens_file=tokens_file(root), token="")
    return TestClient(app), uris, runs


def test_the_route_needs_a_token_like_every_other(local):
    client, _, _ = local
    url = f"/sweeps/{SWEEP}/trials/{BEST}/checkpoint"
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {TOKENS['viewer']}"}):
        response = client.get(url, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in response.json()["detail"]
    assert client.get(url, headers=bearer("viewer")).status_code == 200  # a viewer may read it


def test_a_viewer_gets_the_checkpoint_as_a_tar_manifest_first_with_its_exact_bytes(local):
    client, uris, _ = local
    response = client.get(f"/sweeps/{SWEEP}/trials/{BEST}/checkpoint", headers=bearer("viewer"))
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["x-sweep-checkpoint"] == uris[BEST]
    assert f'filename="{SWEEP}-{BEST}.tar"' in response.headers["content-disposition"]
    got = members(response.content)
    assert list(got) == [checkpoint_format.MANIFEST, checkpoint_format.SPEC, checkpoint_format.STATE]
    for name, data in got.items():
        assert data == storage.read_bytes(storage.join(uris[BEST], name)), name


def test_missing_trials_and_checkpoints_are_404_saying_why(local, tmp_path):
    client, uris, _ = local
    for trial, says in ((BARE, "has no checkpoint"), ("t_99999", "no trial 't_99999'")):
        response = client.get(f"/sweeps/{SWEEP}/trials/{trial}/checkpoint", headers=bearer("viewer"))
        assert response.status_code == 404 and says in response.json()["detail"], response.text
    assert client.get(f"/sweeps/nope/trials/{BEST}/checkpoint", headers=bearer("viewer")).status_code == 404
    assert client.get(f"/sweeps/{SWEEP}/trials/%2e%2e/checkpoint", headers=bearer("viewer")).status_code == 422


def _variant(local, tmp_path, damage) -> TestClient:
    """The sweep copied to a fresh storage root, damaged by ``damage(checkpoint_dir)``."""
    _, _, runs = local
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(runs, root)
    damage(root / SWEEP / BEST / "checkpoint_000001")
    index = storage.read_json(str(root / SWEEP / "sweep.json"))
    for t in index["trials"]:  # the record names the checkpoints by absolute path: re-point it
        if t.get("checkpoint"):
            t["checkpoint"] = t["checkpoint"].replace(runs, str(root))
    storage.write_json_atomic(str(root / SWEEP / "sweep.json"), index)
    return TestClient(create_app(StorageBackend(str(root)), tokens_file=tokens_file(tmp_path), token=""))


def test_a_checkpoint_deleted_by_retention_is_404(local, tmp_path):
    import shutil

    client = _variant(local, tmp_path, shutil.rmtree)
    response = client.get(f"/sweeps/{SWEEP}/trials/{BEST}/checkpoint", headers=bearer("viewer"))
    assert response.status_code == 404 and "retention" in response.json()["detail"]


def test_a_corrupt_small_file_is_a_409_before_anything_is_sent(local, tmp_path):
    client = _variant(local, tmp_path, lambda d: (d / checkpoint_format.SPEC).write_text('{"tampered": 1}'))
    response = client.get(f"/sweeps/{SWEEP}/trials/{BEST}/checkpoint", headers=bearer("viewer"))
    assert response.status_code == 409
    assert "checksum mismatch for spec.json" in response.json()["detail"]


def test_a_record_pointing_outside_its_sweep_is_refused(local, tmp_path):
    _, uris, runs = local
    root = tmp_path / "runs"
    write_sweep(str(root), tmp_path / "scratch")
    index = storage.read_json(str(root / SWEEP / "sweep.json"))
    index["trials"][0]["checkpoint"] = uris[BEST]  # the other storage root's checkpoint
    storage.write_json_atomic(str(root / SWEEP / "sweep.json"), index)
    client = TestClient(create_app(StorageBackend(str(root)), tokens_file=tokens_file(tmp_path), token=""))
    response = client.get(f"/sweeps/{SWEEP}/trials/{BEST}/checkpoint", headers=bearer("admin"))
    assert response.status_code == 409 and "outside sweep" in response.json()["detail"]


def test_a_corrupt_large_file_stops_the_stream_short_before_its_last_chunk(local, tmp_path):
    _, uris, _ = local
    ckpt = tmp_path / "ckpt"
    storage.download_dir(uris[BEST], ckpt)
    state = bytearray((ckpt / checkpoint_format.STATE).read_bytes())
    state[-1] ^= 0xFF  # the same size, one bit pattern off in the last chunk
    (ckpt / checkpoint_format.STATE).write_bytes(bytes(state))
    tar = checkpoint_format.CheckpointTar(str(ckpt))  # small files fine: it opens
    sent = []
    with pytest.raises(checkpoint_format.CheckpointError, match="checksum mismatch for state.pt"):
        for chunk in tar.chunks():
            sent.append(chunk)
    # state.pt's last chunk (and everything after it) was never sent
    assert tar.size - sum(map(len, sent)) > STATE_BYTES % CHUNK


def test_extract_refuses_paths_links_duplicates_and_what_the_manifest_does_not_list(tmp_path):
    manifest = json.dumps({"epoch": 1, "sha256": {"state.pt": "0" * 64, "spec.json": "0" * 64}}).encode()

    def tar_of(*entries) -> io.BytesIO:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, kind in (("checkpoint.json", "manifest"), *entries):
                info = tarfile.TarInfo(name)
                data = manifest if kind == "manifest" else b"ok"
                if kind == "link":
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        buffer.seek(0)
        return buffer

    target = tmp_path / "fine"
    target.mkdir()
    assert checkpoint_format.extract_tar(tar_of(("spec.json", "file"), ("state.pt", "file")), target) == [
        "checkpoint.json", "spec.json", "state.pt"]
    for entries in ((("../escape", "file"),), (("sub/state.pt", "file"),), (("state.pt", "link"),),
                    (("spec.json", "file"), ("spec.json", "file")), (("extra.sh", "file"),),
                    (("checkpoint.json", "manifest"),)):
        target = tmp_path / uuid.uuid4().hex
        target.mkdir()
        with pytest.raises(checkpoint_format.CheckpointError, match="unexpected tar member"):
            checkpoint_format.extract_tar(tar_of(*entries), target)
        assert not (tmp_path / "escape").exists()


# ---------------------------------------------------------------------------- pull --server, live, on moto S3
def _sweepctl_without_s3_credentials(*args: str, server: str, token: str, home: Path):
    """`sweepctl ARGS` as a user with a token and no S3 access: no AWS_* in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SWEEPCTL_", "XDG_CONFIG"))}
    env.update(HOME=str(home), SWEEPCTL_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "service.cli", *args, "--server", server], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_pull_through_the_service_gets_a_direct_pulls_bytes_and_a_corrupt_object_fails_leaving_nothing(
        s3_server, monkeypatch, tmp_path, capsys, caplog):
    point_aws_at(s3_server, monkeypatch, tmp_path)
    bucket = f"handoff-{uuid.uuid4().hex[:10]}"
    storage.s3_client().create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/team-a"
    uris = write_sweep(uri, tmp_path / "scratch")
    app = create_app(StorageBackend(uri), tokens_file=tokens_file(tmp_path), token="")
    with serve(app) as url:
        direct, served = tmp_path / "direct", tmp_path / "served"
        assert sweepctl_main(["pull", SWEEP, "--storage", uri, "-o", str(direct)]) == 0
        # A user with a token and no S3 credentials (a process without AWS_*), the best trial (GET /best).
        pulled = _sweepctl_without_s3_credentials("pull", SWEEP, "-o", str(served), server=url,
                                                  token=TOKENS["viewer"], home=tmp_path)
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert f"through {url}" in pulled.stdout and "sha256 verified" in pulled.stdout
        assert _files(served) == _files(direct)  # the checkpoint and the model card, byte for byte
        assert json.loads((served / "model_card.json").read_text())["checkpoint"] == uris[BEST]

        # Another trial by --trial (GET /trials), in this process (it has the token in its environment).
        monkeypatch.setenv("SWEEPCTL_TOKEN", TOKENS["viewer"])
        monkeypatch.setenv("HOME", str(tmp_path))
        direct, served = tmp_path / "direct-other", tmp_path / "served-other"
        assert sweepctl_main(["pull", SWEEP, "--storage", uri, "--trial", OTHER, "-o", str(direct)]) == 0
        assert sweepctl_main(["pull", SWEEP, "--server", url, "--trial", OTHER, "-o", str(served)]) == 0
        assert _files(served) == _files(direct) and json.loads((served / "model_card.json").read_text())["trial_id"] == OTHER
        assert sweepctl_main(["pull", SWEEP, "--server", url, "--trial", "t_4", "-o", str(tmp_path / "n")]) == 2
        assert f"no trial 't_4' in sweep '{SWEEP}'; trials: {BEST}, {OTHER}, {BARE}" in capsys.readouterr().err

        # A corrupted object: the service stops sending, the client says what the direct pull says.
        key = uris[BEST].removeprefix(f"s3://{bucket}/") + "/" + checkpoint_format.STATE
        state = bytearray(storage.read_bytes(f"s3://{bucket}/{key}"))
        state[len(state) // 2] ^= 0xFF
        storage.s3_client().put_object(Bucket=bucket, Key=key, Body=bytes(state))
        assert sweepctl_main(["pull", SWEEP, "--storage", uri, "-o", str(tmp_path / "bad-direct")]) == 2
        expected = capsys.readouterr().err.strip().removeprefix("error: ")
        assert expected.startswith("checksum mismatch for state.pt")
        assert sweepctl_main(["pull", SWEEP, "--server", url, "-o", str(tmp_path / "bad")]) == 2
        said = capsys.readouterr().err  # this process also holds the service, which logs why it stopped
        assert said.strip().splitlines()[-1] == f"error: {expected}"
        assert f"stopped sending sweep {SWEEP} trial {BEST}'s checkpoint: checksum mismatch for state.pt" in caplog.text
        # A small state.pt (most models) is read whole and checked before anything is sent: a 409.
        monkeypatch.setattr(checkpoint_format, "SMALL_FILE_BYTES", STATE_BYTES)
        assert sweepctl_main(["pull", SWEEP, "--server", url, "-o", str(tmp_path / "bad")]) == 2
        said = capsys.readouterr().err.strip()
        assert said.startswith(f"error: {expected.removesuffix('; nothing was written')}") and "nothing was written" in said
        assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.*"))
        assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.*"))

        # A wrong token: the service's 401, in one line, and nothing written.
        monkeypatch.setenv("SWEEPCTL_TOKEN", "wrong")
        assert sweepctl_main(["pull", SWEEP, "--server", url, "-o", str(tmp_path / "x")]) == 2
        assert "missing or wrong bearer token" in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
