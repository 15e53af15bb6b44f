"""No secret leaves the environment: an S3 sweep run by the real `sweepctl` driver (real Ray, its
own session directory) leaves its AWS secret key in no file of Ray's session (logs included) and in
no object of the bucket.

The S3 server is a moto server of this test's own (a process: moto's settings are global) that
checks every request's SigV4 signature against an IAM access key it generated: the sweep can only
finish if the driver and every Ray worker had the secret, so the absence is not vacuous.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from conftest import BASE_SPEC, deep_update, point_aws_at
from drivers import sweepctl
from service.core import storage
from service.core.record import SweepStore

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def authenticating_s3(monkeypatch, tmp_path):
    """A moto server enforcing IAM auth; this test's environment holds an access key it issued
    (its secret is random, made by moto). Yields (endpoint, secret)."""
    pytest.importorskip("moto.server")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                requests.get(f"{endpoint}/moto-api/", timeout=5)
                break
            except (requests.ConnectionError, requests.Timeout):
                # Not listening yet, or listening but its first answer (moto loads its backends
                # lazily) is slow on a loaded 2-core machine: both mean "not ready", not "broken".
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("the moto server did not start")
                time.sleep(0.2)
        point_aws_at(endpoint, monkeypatch, tmp_path)
        import boto3

        iam = boto3.session.Session().client("iam")
        iam.create_user(UserName="sweeper")
        iam.put_user_policy(UserName="sweeper", PolicyName="all", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="sweeper")["AccessKey"]
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        yield endpoint, key["SecretAccessKey"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def _files_holding(root: Path, secret: bytes) -> tuple[list[str], int]:
    """(files under ``root`` whose bytes contain ``secret``, how many regular files were read)."""
    hits, read = [], 0
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if path.is_symlink() or not path.is_file():
                continue  # sockets, the session_latest link
            try:
                data = path.read_bytes()
            except OSError:
                continue
            read += 1
            if secret in data:
                hits.append(str(path.relative_to(root)))
    return hits, read


def test_the_s3_secret_reaches_no_ray_log_and_no_stored_object(authenticating_s3, monkeypatch, tmp_path):
    _, secret = authenticating_s3
    client = storage.s3_client()
    bucket = f"sweeps-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    # The key authenticates, and nothing else does: a wrong secret is refused.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-" + secret)
    with pytest.raises(Exception, match="SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied"):
        storage.s3_client().list_objects_v2(Bucket=bucket)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    # Ray's session under a directory of this test's own (short: Ray's socket paths must fit 107 bytes).
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    spec = deep_update(BASE_SPEC, {"name": "secret", "storage": {"uri": f"s3://{bucket}/team-a"},
                                   "train": {"epochs": 1}})
    spec_path = tmp_path / "secret.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    try:
        run = sweepctl("run", str(spec_path))
        assert run.returncode == 0, run.stdout + run.stderr

        # The sweep finished, and its trial (in a Ray worker) wrote to the bucket with the key.
        index = SweepStore(f"s3://{bucket}/team-a", "secret").read_index()
        assert index.status == "finished" and index.trial_states == {"terminated": 1}
        trial = index.trials[0]
        objects = [obj["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                   for obj in page.get("Contents", [])]
        ckpt = trial.checkpoint.removeprefix(f"s3://{bucket}/")
        assert f"{ckpt}/state.pt" in objects and "team-a/secret/tuner.pkl" in objects

        # The secret is in no object of the bucket (tuner.pkl, Tune's state, logs, checkpoints...)
        leaked = [k for k in objects if secret.encode() in client.get_object(Bucket=bucket, Key=k)["Body"].read()]
        assert leaked == []

        # ...and in no file of Ray's session: logs (runtime_env_agent.log, raylet.out, the workers'),
        # GCS and Tune's local staging.
        sessions = list((ray_tmp / "ray").glob("session_2*"))
        assert len(sessions) == 1, sessions
        assert (sessions[0] / "logs" / "raylet.out").is_file()
        assert list((sessions[0] / "logs").glob("python-core-worker-*.log")), "no Ray worker ran in this session"
        hits, read = _files_holding(ray_tmp, secret.encode())
        assert read > 20 and hits == [], hits
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
