"""service/control/rayjob.py: every shipped spec renders to a RayJob KubeRay's CRD accepts, and the RayJob
carries what the sweep needs (its spec, storage, resources, credentials, metrics ports)."""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kube_schemas import InvalidManifest, validate

from service.cli import main
from service.core.errors import UserError
from service.core.loading import load_spec, parse_spec
from service.control.rayjob import (
    SOURCE_ANNOTATION,
    SPEC_ENV,
    RenderOptions,
    cluster_spec,
    load_render_options,
    render_rayjob,
    to_yaml,
)

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "sweeps").glob("*.yaml"))
DEFAULTS = RenderOptions()
LABELS = {"app.kubernetes.io/managed-by": "sweep-service", "sweep-service/sweep": "cnn-structure"}

# The service's config.yaml as the shared contract shows it (the Helm chart writes this file).
CONTRACT_CONFIG = """\
image: ghcr.io/sweep-service/sweep-service:0.1.0
storage_uri: s3://sweeps/runs
s3:
  secret_name: sweep-s3
  endpoint: http://minio.sweeps.svc.cluster.local:9000
  region: us-east-1
  addressing_style: path
head:   {cpu: "2", memory: 8Gi}
worker: {memory: 16Gi, node_selector: {}, tolerations: []}
ttl_seconds_after_finished: 3600
active_deadline_seconds: 86400
backoff_limit: 2
"""


def render(path: str | Path = "sweeps/cnn_structure.yaml", overrides=(), options: RenderOptions = DEFAULTS) -> dict:
    return render_rayjob(load_spec(REPO / path, list(overrides)), options)


def head_container(rayjob: dict) -> dict:
    return rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def worker_group(rayjob: dict) -> dict:
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return group


def worker_container(rayjob: dict) -> dict:
    return worker_group(rayjob)["template"]["spec"]["containers"][0]


def embedded_spec(rayjob: dict) -> str:
    (value,) = [e["value"] for e in head_container(rayjob)["env"] if e["name"] == SPEC_ENV]
    return value


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def pod_templates(rayjob: dict) -> list[dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [
        cluster["headGroupSpec"]["template"],
        *(group["template"] for group in cluster["workerGroupSpecs"]),
        rayjob["spec"]["submitterPodTemplate"],
    ]


# ============================================================================ schema
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_shipped_spec_renders_to_a_rayjob_and_raycluster_kuberay_accepts(path):
    rayjob = render(path)
    validate(rayjob)
    # The same cluster spec as a RayCluster (what KubeRay creates from it) against its own CRD.
    validate({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": rayjob["metadata"]["name"]},
              "spec": rayjob["spec"]["rayClusterSpec"]})
    # What `kubectl apply -f` reads is the YAML text, not the dict.
    assert yaml.safe_load(to_yaml(rayjob)) == rayjob


@pytest.mark.parametrize(
    "path, misspelled",
    [
        (("spec",), "shutdownAfterJobFinish"),
        (("spec", "rayClusterSpec", "headGroupSpec", "template", "metadata"), "lables"),
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "containers", 0), "imagePullPolicyy"),
        (("spec", "submitterPodTemplate", "spec", "securityContext"), "runAsNonroot"),
    ],
)
def test_the_crd_validator_rejects_a_misspelled_field(path, misspelled):
    rayjob = copy.deepcopy(render())
    node = rayjob
    for key in path:
        node = node[key]
    node[misspelled] = True
    with pytest.raises(InvalidManifest, match=misspelled):
        validate(rayjob)


def test_the_crd_validator_rejects_a_wrong_type():
    rayjob = copy.deepcopy(render())
    worker_group(rayjob)["maxReplicas"] = "eight"
    with pytest.raises(InvalidManifest, match="maxReplicas"):
        validate(rayjob)


# ============================================================================ the spec inside
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_the_embedded_spec_loads_back_to_the_spec_that_runs(path):
    spec = load_spec(path)
    rayjob = render_rayjob(spec, DEFAULTS)
    loaded = parse_spec(embedded_spec(rayjob), source="SWEEP_SPEC")
    assert loaded == cluster_spec(spec, DEFAULTS)
    assert loaded.storage.uri.startswith("s3://")
    assert rayjob["metadata"]["name"] == spec.name


def test_default_local_storage_becomes_the_clusters_and_explicit_s3_is_kept():
    # cnn_structure leaves storage unset; quickstart writes the default ./runs out: both are "default".
    for path in ("sweeps/cnn_structure.yaml", "sweeps/quickstart.yaml"):
        options = RenderOptions(storage_uri="s3://team-bucket/sweeps")
        loaded = parse_spec(embedded_spec(render(path, options=options)))
        assert loaded.storage.uri == "s3://team-bucket/sweeps"
    kept = parse_spec(embedded_spec(render(overrides=["storage.uri=s3://other-bucket/mine"])))
    assert kept.storage.uri == "s3://other-bucket/mine"


def test_an_explicit_local_storage_path_is_a_user_error_that_points_to_s3():
    with pytest.raises(UserError, match=r"s3://") as err:
        render(overrides=["storage.uri=/mnt/results"])
    assert "/mnt/results" in str(err.value) and "do not share" in str(err.value)


def test_the_user_text_is_kept_verbatim_in_an_annotation():
    text = (REPO / "sweeps/cnn_structure.yaml").read_text()
    rayjob = render_rayjob(parse_spec(text), DEFAULTS, source_yaml=text)
    assert rayjob["metadata"]["annotations"][SOURCE_ANNOTATION] == text
    assert "annotations" not in render()["metadata"]


# ============================================================================ the driver's start
STUB_DRIVER = """#!/bin/sh
printf '%s\\n' "$@" > "$STUB_OUT/argv"
cat > "$STUB_OUT/stdin"
"""


def run_entrypoint_like_kuberay(rayjob: dict, tmp_path: Path, mode: str) -> tuple[list[str], str]:
    """Run the RayJob's entrypoint through the real shells it meets, with a stub `sweepctl` that
    records its arguments and stdin. K8sJobMode: the submitter runs `bash -ce -- "... ray job submit
    ... -- ENTRYPOINT ;"`; `ray job submit` re-joins the words it got after `--` with shlex.join
    (ray/dashboard/modules/job/cli.py) and Ray's JobSupervisor runs that with Popen(shell=True).
    HTTPMode: KubeRay posts the entrypoint as is; the JobSupervisor runs it with Popen(shell=True)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "sweepctl"
    stub.write_text(STUB_DRIVER)
    stub.chmod(0o755)
    entrypoint = rayjob["spec"]["entrypoint"]
    if mode == "K8sJobMode":
        join = "import shlex, sys; print(shlex.join(sys.argv[1:]))"
        submitter = f"{shlex.quote(sys.executable)} -c {shlex.quote(join)} {entrypoint} ;"
        command = subprocess.run(["/bin/bash", "-ce", "--", submitter], capture_output=True, text=True,
                                 check=True, env={"PATH": os.environ["PATH"]}).stdout.rstrip("\n")
    else:
        command = entrypoint
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_OUT": str(tmp_path), SPEC_ENV: embedded_spec(rayjob)}
    subprocess.run(command, shell=True, env=env, check=True)
    return (tmp_path / "argv").read_text().splitlines(), (tmp_path / "stdin").read_text()


@pytest.mark.parametrize("mode", ["K8sJobMode", "HTTPMode"])
def test_the_entrypoint_pipes_the_exact_spec_into_a_resuming_driver(tmp_path, mode):
    # Quotes, a dollar sign and a backtick in a value: none may be expanded on the way.
    rayjob = render(overrides=["data.path=/data/$HOME/`id`/it's \"here\""])
    argv, stdin = run_entrypoint_like_kuberay(rayjob, tmp_path, mode)
    assert argv == ["run", "-", "--resume", "--wait-for-resources", "--metrics-port", "9500"]
    assert stdin == embedded_spec(rayjob)
    assert parse_spec(stdin).data.path == "/data/$HOME/`id`/it's \"here\""
    assert rayjob["spec"]["submissionMode"] == "K8sJobMode"


def test_the_metrics_port_is_the_specs_on_the_driver_and_the_head():
    rayjob = render(overrides=["metrics.port=9600"])
    ports = {p["name"]: p["containerPort"] for p in head_container(rayjob)["ports"]}
    assert ports == {"metrics": 8080, "sweep-metrics": 9600}
    assert rayjob["spec"]["entrypoint"].endswith("--metrics-port 9600'")
    off = render(overrides=["metrics.port=0"])  # exporter off: no port to declare
    assert {p["name"] for p in head_container(off)["ports"]} == {"metrics"}
    assert [p["name"] for p in worker_container(off)["ports"]] == ["metrics"]


# ============================================================================ cluster shape
def test_trials_never_run_on_the_head_and_the_driver_stays_there():
    rayjob = render()
    assert rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    # Entrypoint resources would let Ray place the driver on a worker, away from SWEEP_SPEC.
    assert not {"entrypointNumCpus", "entrypointNumGpus", "entrypointResources"} & set(rayjob["spec"])
    resources = head_container(rayjob)["resources"]
    assert resources["limits"] == {"cpu": "2", "memory": "8Gi"} and "nvidia.com/gpu" not in resources["limits"]


def test_gpu_workers_are_sized_from_the_specs_resources():
    # cnn_structure: 36 trials, 8 at a time, 4 CPUs + 1 GPU each.
    group = worker_group(render())
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (0, 0, 8)
    limits = worker_container(render())["resources"]["limits"]
    assert limits == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 1}
    # Without max_concurrent_trials every trial may run at once; DDP multiplies the workers.
    ddp = worker_group(render(overrides=["resources.max_concurrent_trials=null", "resources.workers_per_trial=2"]))
    assert ddp["maxReplicas"] == 72


def test_fractional_gpus_share_one_whole_gpu_per_pod():
    # mnist_cnn_ladder: 9 trials of 2 CPUs and 0.25 GPU: 4 workers per pod, 3 pods.
    rayjob = render("sweeps/mnist_cnn_ladder.yaml")
    assert worker_group(rayjob)["maxReplicas"] == 3
    assert worker_container(rayjob)["resources"]["limits"] == {"cpu": "8", "memory": "16Gi", "nvidia.com/gpu": 1}
    with pytest.raises(UserError, match="whole"):
        render(overrides=["resources.gpus_per_worker=1.5"])


def test_cpu_only_workers_ask_for_no_gpu_and_fractional_cpus_in_millicores():
    rayjob = render("sweeps/quickstart.yaml", overrides=["resources.cpus_per_worker=0.5"])
    limits = worker_container(rayjob)["resources"]["limits"]
    assert limits == {"cpu": "500m", "memory": "16Gi"}
    assert worker_group(rayjob)["maxReplicas"] == 12


def test_worker_placement_comes_from_the_options():
    options = RenderOptions.model_validate({
        "worker": {"memory": "24Gi", "node_selector": {"nvidia.com/gpu.present": "true"},
                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    })
    rayjob = render(options=options)
    validate(rayjob)
    pod = worker_group(rayjob)["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert worker_container(rayjob)["resources"]["requests"]["memory"] == "24Gi"
    assert "nodeSelector" not in rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]


def test_a_retried_rayjob_resumes_on_a_fresh_cluster_and_cleans_up():
    spec = render()["spec"]
    assert "--resume" in spec["entrypoint"] and "--wait-for-resources" in spec["entrypoint"]
    assert spec["backoffLimit"] == 2 and spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 3600 and spec["activeDeadlineSeconds"] == 86400
    no_deadline = render(options=RenderOptions(active_deadline_seconds=None))["spec"]
    assert "activeDeadlineSeconds" not in no_deadline
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True


# ============================================================================ pods
def test_every_pod_is_labelled_with_its_sweep_and_runs_as_non_root():
    rayjob = render()
    assert rayjob["metadata"]["labels"] == LABELS
    for template in pod_templates(rayjob):
        assert template["metadata"]["labels"] == LABELS
        security = template["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
        for container in template["spec"]["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["image"] == DEFAULTS.image


def test_every_ray_container_gets_the_s3_settings_and_the_credentials_from_the_secret():
    rayjob = render()
    for container in (head_container(rayjob), worker_container(rayjob)):
        env = env_of(container)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key] == {"secretKeyRef": {"name": "sweep-s3", "key": key}}
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_DEFAULT_REGION"] == "us-east-1"
        assert env["SWEEP_S3_ADDRESSING_STYLE"] == "path"
    # AWS with pod identities: no Secret, no endpoint; only what is set reaches the pods.
    aws = RenderOptions.model_validate({"s3": {"secret_name": "", "endpoint": "", "addressing_style": "virtual"}})
    env = env_of(worker_container(render(options=aws)))
    assert env == {"AWS_DEFAULT_REGION": "us-east-1", "SWEEP_S3_ADDRESSING_STYLE": "virtual"}


# ============================================================================ options
def test_the_contract_config_loads_and_unknown_or_bad_options_are_named(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONTRACT_CONFIG)
    options = load_render_options(config)
    assert options.s3.endpoint == "http://minio.sweeps.svc.cluster.local:9000"
    assert options.head.cpu == "2" and options.worker.memory == "16Gi" and options.backoff_limit == 2
    assert load_render_options(None) == DEFAULTS

    config.write_text(CONTRACT_CONFIG.replace("backoff_limit: 2", "backof_limit: 2").replace("memory: 8Gi", "memory: lots")
                      .replace("s3://sweeps/runs", "/srv/runs"))
    with pytest.raises(UserError) as err:
        load_render_options(config)
    message = str(err.value)
    assert str(config) in message and "3 problems" in message
    assert "backof_limit: unknown option" in message
    assert "head.memory: not a Kubernetes quantity: 'lots'" in message
    assert "storage_uri: must be s3://bucket/prefix" in message

    config.write_text("image: [unclosed\n")
    with pytest.raises(UserError, match=r"line \d+\): not valid YAML"):
        load_render_options(config)
    with pytest.raises(UserError, match="cannot read the render options"):
        load_render_options(tmp_path / "missing.yaml")


# ============================================================================ CLI
def test_sweepctl_render_rayjob_prints_the_manifest_with_config_and_image(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(CONTRACT_CONFIG.replace("s3://sweeps/runs", "s3://lab/sweeps"))
    rc = main(["render", "rayjob", str(REPO / "sweeps/cnn_structure.yaml"), "--config", str(config),
               "--image", "registry.example/sweeps:dev", "--set", "train.epochs=1"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("# Generated by `sweepctl render rayjob`")
    rayjob = yaml.safe_load(out)
    validate(rayjob)
    assert head_container(rayjob)["image"] == worker_container(rayjob)["image"] == "registry.example/sweeps:dev"
    loaded = parse_spec(embedded_spec(rayjob))
    assert loaded.train.epochs == 1 and loaded.storage.uri == "s3://lab/sweeps"


def test_sweepctl_render_rayjob_errors_are_short_and_exit_2(tmp_path):
    def sweepctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "service.cli", "render", "rayjob", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    local = sweepctl("sweeps/cnn_structure.yaml", "--set", "storage.uri=/mnt/results")
    bad_image = sweepctl("sweeps/cnn_structure.yaml", "--image", "not an image")
    bad_spec = sweepctl("sweeps/cnn_structure.yaml", "--set", "model.filtres=3")
    for result in (local, bad_image, bad_spec):
        assert result.returncode == 2 and result.stdout == ""
        assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")
    assert "s3://" in local.stderr
    assert "--image" in bad_image.stderr
    assert "did you mean 'filters'" in bad_spec.stderr


def test_rendering_imports_neither_torch_nor_ray_nor_kubernetes():
    code = (
        "import sys; from service.cli import main;"
        "rc = main(['render', 'rayjob', 'sweeps/cnn_structure.yaml', '-o', sys.argv[1]]);"
        "print('HEAVY', sorted(m for m in ('torch', 'ray', 'kubernetes') if m in sys.modules)); sys.exit(rc)"
    )
    out = Path(os.devnull)
    result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_a_fifo_sweeps_embedded_spec_carries_no_other_schedulers_or_datasets_fields():
    """The data and scheduler sections are unions by name: the spec a RayJob carries holds only
    what its dataset and scheduler take (before them, a FIFO RayJob carried PBT's fields)."""
    embedded = yaml.safe_load(embedded_spec(render("sweeps/cnn_structure.yaml", ["data.name=cifar10"])))
    assert embedded["scheduler"] == {"name": "fifo"}
    assert set(embedded["data"]) == {"name", "val_fraction", "val_split", "augment", "path", "sha256", "download"}
    digits = yaml.safe_load(embedded_spec(render("sweeps/quickstart.yaml")))
    assert set(digits["data"]) == {"name", "val_fraction", "val_split", "augment"}
    assert set(digits["scheduler"]) == {"name", "grace_period", "reduction_factor", "brackets"}  # asha's own
