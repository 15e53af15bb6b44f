"""Sweeps stored on S3, end to end: a real S3 protocol server (moto) over HTTP, real Ray, the real
`sweepctl` driver in its own process (so it can be SIGKILLed like a lost RayJob head).

Each test starts its sweep with `sweepctl run` in a subprocess: the driver's embedded Ray gets the
AWS_* environment at start-up, as it would from a Kubernetes Secret.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import BASE_SPEC, deep_update, point_aws_at
from drivers import REPO, index_of, start_driver, sweepctl, wait_for
from service.core import storage
from service.core.record import SweepStore, TrialSummary

pytestmark = pytest.mark.slow


@pytest.fixture
def bucket(s3_server, monkeypatch, tmp_path):
    """A fresh bucket; this test's environment (inherited by the drivers) points at the server."""
    point_aws_at(s3_server, monkeypatch, tmp_path)
    name = f"sweeps-{uuid.uuid4().hex[:10]}"
    storage.s3_client().create_bucket(Bucket=name)
    return name


def write_spec(tmp_path: Path, bucket: str, **changes) -> Path:
    spec = deep_update(BASE_SPEC, {"storage": {"uri": f"s3://{bucket}/team-a"}, **changes})
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def keys(bucket: str, prefix: str) -> list[str]:
    pages = storage.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def test_sweep_on_s3_stores_everything_and_pull_reproduces_the_best_val_acc(bucket, tmp_path):
    spec_path = write_spec(tmp_path, bucket, name="s3-grid", model={"filters": {"grid": [4, 8]}},
                           checkpoint={"keep": 1}, report={"auto": True})
    run = sweepctl("run", str(spec_path))
    assert run.returncode == 0, run.stdout + run.stderr

    uri = f"s3://{bucket}/team-a"
    store = SweepStore(uri, "s3-grid")
    index = store.read_index()
    assert index.status == "finished" and index.trial_states == {"terminated": 2}
    # The driver wrote the report next to the sweep in the bucket (drawn in a scratch directory,
    # not in its working directory), and `sweepctl run` said where.
    published = set(keys(bucket, "team-a/s3-grid/report/"))
    assert {"team-a/s3-grid/report/report.html", "team-a/s3-grid/report/report.json",
            "team-a/s3-grid/report/leaderboard.png"} <= published
    assert f"report: {uri}/s3-grid/report/report.html" in run.stdout
    assert not (REPO / "reports" / "s3-grid").exists()
    objects = keys(bucket, "team-a/s3-grid/")
    assert {"team-a/s3-grid/spec.yaml", "team-a/s3-grid/sweep.json", "team-a/s3-grid/driver.json"} <= set(objects)
    assert "team-a/s3-grid/summary.json" not in objects and "team-a/s3-grid/driver.log" not in objects
    assert any(k.startswith("team-a/s3-grid/logs/driver/") for k in objects) and store.read_driver_log()
    for trial in index.trials:
        assert f"team-a/s3-grid/{trial.trial_id}/trial.json" in objects
        assert any(k.startswith(f"team-a/s3-grid/{trial.trial_id}/logs/") for k in objects)
        assert trial.checkpoint.startswith(f"s3://{bucket}/team-a/s3-grid/{trial.trial_id}/checkpoint_")
        ckpt_key = trial.checkpoint.removeprefix(f"s3://{bucket}/")
        assert {f"{ckpt_key}/state.pt", f"{ckpt_key}/spec.json", f"{ckpt_key}/checkpoint.json"} <= set(objects)
        # retention: keep 1 by val_acc, plus Ray's latest: at most 2 checkpoints left of 2 epochs
        kept = {k.split("/")[3] for k in objects if k.startswith(f"team-a/s3-grid/{trial.trial_id}/checkpoint_")}
        assert 1 <= len(kept) <= 2

    best = sweepctl("best", "s3-grid", "--storage", uri, "--json")
    assert best.returncode == 0, best.stderr
    shown = json.loads(best.stdout)
    assert TrialSummary.model_validate(shown) == index.best and shown["objective"] == {"metric": "val_acc", "mode": "max"}

    out = tmp_path / "pulled"
    pull = sweepctl("pull", "s3-grid", "--storage", uri, "--best", "-o", str(out))
    assert pull.returncode == 0, pull.stdout + pull.stderr
    card = json.loads((out / "model_card.json").read_text())
    assert card["trial_id"] == index.best_trial and card["config"] == index.best.config
    assert set(card["files"]) == {"state.pt", "spec.json", "checkpoint.json"}

    from trainer import load_model
    from trainer.data import load_dataset
    from trainer.loop import evaluate

    model, trial_spec = load_model(out)
    data = load_dataset(trial_spec.data, trial_spec.seed)  # the same seed: the same validation split
    _, val_acc = evaluate(model, data.val_x, data.val_y, None)
    best_trial = store.read_trial(card["trial_id"])
    recorded = next(h for h in best_trial.history if h.epoch == card["epoch"])
    assert val_acc == pytest.approx(recorded.val_acc) == pytest.approx(card["metrics"]["val_acc"])

    # `sweepctl report` draws it again here and publishes it next to the sweep in the bucket.
    before = storage.read_json(f"{uri}/s3-grid/report/report.json")
    report = sweepctl("report", "s3-grid", "--storage", uri, "--top", "1", cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    assert (tmp_path / "reports" / "s3-grid" / "report.html").exists()
    after = storage.read_json(f"{uri}/s3-grid/report/report.json")
    assert (before["options"]["top"], after["options"]["top"]) == (5, 1)

    # A corrupted object is caught by the checksums, and nothing is left behind.
    key = card["checkpoint"].removeprefix(f"s3://{bucket}/") + "/state.pt"
    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=b"not the weights")
    bad = sweepctl("pull", "s3-grid", "--storage", uri, "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "checksum mismatch for state.pt" in bad.stderr
    assert not (tmp_path / "bad").exists()


# Slow enough (a few seconds per epoch) that the outage comes while trials train and checkpoint.
SLOW_TRIALS = {
    "data": {"name": "synthetic", "num_samples": 4096, "image_size": 32},
    "model": {"num_conv_layers": 2, "filters": 32, "num_fc_layers": 1},
    "train": {"epochs": 4, "batch_size": 16, "optimizer": {"lr": {"grid": [1.0e-3, 2.0e-3, 3.0e-3]}}},
    "resources": {"max_concurrent_trials": 1},
}


def test_sweep_rides_out_a_30_second_storage_outage_and_loses_nothing(tmp_path, monkeypatch):
    """The S3 server goes away for 30 s while trials train and checkpoint, then comes back on the
    same address (moto keeps its objects in this process, like a restarted MinIO keeps its disk)."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    name = "s3-outage"
    try:
        point_aws_at(f"http://127.0.0.1:{port}", monkeypatch, tmp_path)
        bucket = f"outage-{uuid.uuid4().hex[:8]}"
        storage.s3_client().create_bucket(Bucket=bucket)
        spec_path = write_spec(tmp_path, bucket, name=name, **{**SLOW_TRIALS, "resources": {"max_concurrent_trials": 2}},
                               checkpoint={"keep": None})
        uri = f"s3://{bucket}/team-a"
        log = tmp_path / "driver.log"
        driver = start_driver("run", str(spec_path), log=log)
        try:
            wait_for(lambda: (s := index_of(uri, name)) and any(t.checkpoint for t in s.trials),
                     "a first checkpoint", proc=driver, log=log)
            server.stop()
            time.sleep(30)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            assert driver.wait(timeout=900) == 0, log.read_text()
        finally:
            if driver.poll() is None:
                driver.kill()

        store = SweepStore(uri, name)
        index = store.read_index()
        assert index.status == "finished" and index.trial_states == {"terminated": 3}, log.read_text()
        objects = set(keys(bucket, f"team-a/{name}/"))
        for trial in store.read_trials(index):
            assert [h.epoch for h in trial.history] == [1, 2, 3, 4]
            # keep: all → every epoch's checkpoint is in the bucket, whole and matching its manifest
            prefix = f"team-a/{name}/{trial.trial_id}/"
            checkpoints = sorted({k[len(prefix):].split("/")[0] for k in objects
                                  if k.startswith(prefix + "checkpoint_") and not k.endswith("/")})
            assert len(checkpoints) == 4, f"{trial.trial_id}: {checkpoints}"
            for ckpt in checkpoints:
                manifest = json.loads(storage.read_text(f"s3://{bucket}/{prefix}{ckpt}/checkpoint.json"))
                for file, digest in manifest["sha256"].items():
                    data = storage.read_bytes(f"s3://{bucket}/{prefix}{ckpt}/{file}")
                    assert hashlib.sha256(data).hexdigest() == digest
            assert trial.checkpoint.startswith(f"s3://{bucket}/{prefix}checkpoint_")
    finally:
        server.stop()


def test_a_two_worker_trial_keeps_its_checkpoints_on_s3(bucket, tmp_path):
    """N-worker trials: Ray Train's rank 0 may be on another node than the trial, so its
    checkpoints go through the sweep's S3 storage before Tune keeps them."""
    spec_path = write_spec(tmp_path, bucket, name="s3-ddp", resources={"workers_per_trial": 2, "cpus_per_worker": 1},
                           train={"epochs": 1})
    run = sweepctl("run", str(spec_path))
    assert run.returncode == 0, run.stdout + run.stderr
    (trial,) = SweepStore(f"s3://{bucket}/team-a", "s3-ddp").read_trials()
    assert trial.status == "terminated" and trial.history[0].duplicate_samples == 0
    assert trial.checkpoint.startswith(f"s3://{bucket}/team-a/s3-ddp/{trial.trial_id}/checkpoint_")
    manifest = json.loads(storage.read_text(trial.checkpoint + "/checkpoint.json"))
    assert hashlib.sha256(storage.read_bytes(trial.checkpoint + "/state.pt")).hexdigest() == manifest["sha256"]["state.pt"]
    # Ray Train's own run (where rank 0 wrote first) is in the bucket too, not on a node's disk.
    assert any(k.startswith("team-a/s3-ddp/.train/train-") for k in keys(bucket, "team-a/s3-ddp/.train/"))
    # Rank 0's output is in the trial's log on S3, each line once; rank 1 succeeded, so it kept none.
    log = sweepctl("logs", "s3-ddp", "--trial", trial.trial_id, "--storage", f"s3://{bucket}/team-a")
    assert log.returncode == 0, log.stderr
    assert f"trial {trial.trial_id}: attempt 1, rank0 =====" in log.stdout and "rank1 =====" not in log.stdout
    assert log.stdout.count("2 worker(s)") == 1 and log.stdout.count("epoch 1/1:") == 1
