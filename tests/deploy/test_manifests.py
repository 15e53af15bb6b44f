"""Every Kubernetes object in deploy/ is valid (KubeRay CRDs, core schemas, Prometheus Operator
shapes), the example RayJob is the renderer's current output, and the pieces fit each other: the
PodMonitors find the rendered pods and ports, the dev MinIO is what the render defaults point at."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
from kube_schemas import InvalidManifest, load_documents, validate

from service.cli import main
from service.core.loading import load_spec
from service.control.rayjob import SWEEP_LABEL, RenderOptions, render_rayjob
from service.core.storage import split_s3

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
EXAMPLE_RAYJOB = DEPLOY / "rayjob-cnn-structure.yaml"
MANIFESTS = sorted({*DEPLOY.glob("*.yaml"), *DEPLOY.glob("**/*.yaml")})
DOCUMENTS = [(path, i, doc) for path in MANIFESTS for i, doc in enumerate(load_documents(path))]
DEFAULTS = RenderOptions()


def documents(kind: str, path: Path | None = None) -> list[dict]:
    return [doc for p, _, doc in DOCUMENTS if doc["kind"] == kind and (path is None or p == path)]


@pytest.mark.parametrize("path, index, doc", DOCUMENTS,
                         ids=[f"{p.relative_to(DEPLOY)}:{d['kind']}/{d['metadata']['name']}" for p, _, d in DOCUMENTS])
def test_every_manifest_in_deploy_is_valid(path, index, doc):
    validate(doc)


def test_deploy_holds_every_kind_the_install_needs():
    kinds = {doc["kind"] for _, _, doc in DOCUMENTS}
    assert {"RayJob", "Secret", "PersistentVolumeClaim", "Deployment", "Service", "Job",
            "PodMonitor", "PrometheusRule"} <= kinds


def test_core_validation_is_strict_about_fields_and_types():
    (deployment,) = documents("Deployment", DEPLOY / "minio.yaml")
    validate(deployment)
    misspelled = copy.deepcopy(deployment)
    misspelled["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(InvalidManifest, match="imagePullPolcy"):
        validate(misspelled)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    with pytest.raises(InvalidManifest, match="replicas"):
        validate(wrong_type)


def test_the_example_rayjob_is_what_sweepctl_renders_now(tmp_path):
    fresh = tmp_path / "rayjob.yaml"
    assert main(["render", "rayjob", str(REPO / "sweeps/cnn_structure.yaml"), "-o", str(fresh)]) == 0
    assert EXAMPLE_RAYJOB.read_text() == fresh.read_text(), (
        f"{EXAMPLE_RAYJOB.relative_to(REPO)} is out of date with sweeps/cnn_structure.yaml or service/control/rayjob.py: "
        "regenerate it with `make deploy-manifests`"
    )


def test_every_pod_in_deploy_runs_as_non_root():
    templates = [d["spec"]["template"] for d in documents("Deployment") + documents("Job")]
    for rayjob in documents("RayJob"):
        cluster = rayjob["spec"]["rayClusterSpec"]
        templates += [cluster["headGroupSpec"]["template"], rayjob["spec"]["submitterPodTemplate"],
                      *(g["template"] for g in cluster["workerGroupSpecs"])]
    assert len(templates) >= 5
    for template in templates:
        security = template["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security.get("runAsUser") != 0
        for container in template["spec"]["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


# ============================================================================ PodMonitors ↔ RayJob
def kuberay_pods(rayjob: dict) -> list[dict]:
    """The pods KubeRay creates for a RayJob: the template's labels plus KubeRay's own."""
    cluster_name = rayjob["metadata"]["name"] + "-x7k2p"  # KubeRay appends a random suffix
    cluster = rayjob["spec"]["rayClusterSpec"]
    groups = [("head", cluster["headGroupSpec"])] + [("worker", g) for g in cluster["workerGroupSpecs"]]
    return [
        {
            "labels": {**group["template"]["metadata"]["labels"], "ray.io/node-type": node_type,
                       "ray.io/cluster": cluster_name},
            "ports": {p["name"] for c in group["template"]["spec"]["containers"] for p in c.get("ports", [])},
            "node_type": node_type,
        }
        for node_type, group in groups
    ]


def selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def prometheus_label(label: str) -> str:
    """How Prometheus's Kubernetes discovery names a pod label: __meta_kubernetes_pod_label_<sanitized>."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label)


@pytest.mark.parametrize("rayjob", [documents("RayJob", EXAMPLE_RAYJOB)[0],
                                    render_rayjob(load_spec(REPO / "sweeps/quickstart.yaml"), DEFAULTS)],
                         ids=["example", "quickstart"])
def test_the_podmonitors_scrape_the_driver_on_the_head_and_ray_on_every_pod(rayjob):
    pods = kuberay_pods(rayjob)
    monitors = {m["metadata"]["name"]: m for m in documents("PodMonitor", DEPLOY / "prometheus/podmonitors.yaml")}
    assert set(monitors) == {"sweep-driver", "sweep-ray-nodes"}
    scraped = {}
    for name, monitor in monitors.items():
        selected = [p for p in pods if selects(monitor["spec"]["selector"], p["labels"])]
        scraped[name] = {p["node_type"] for p in selected}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for pod in selected:
                assert endpoint["port"] in pod["ports"], f"{name}: {pod['node_type']} pod has no port {endpoint['port']}"
            sources = {s for r in endpoint.get("relabelings", []) for s in r.get("sourceLabels", [])}
            assert prometheus_label(SWEEP_LABEL) in sources  # the `sweep` label comes from our pod label
    assert scraped == {"sweep-driver": {"head"}, "sweep-ray-nodes": {"head", "worker"}}


# ============================================================================ dev MinIO ↔ render defaults
def test_the_dev_minio_is_what_the_render_defaults_point_at():
    minio = DEPLOY / "minio.yaml"
    (secret,) = documents("Secret", minio)
    assert secret["metadata"]["name"] == DEFAULTS.s3.secret_name
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}

    endpoint = urlparse(DEFAULTS.s3.endpoint)
    (service,) = documents("Service", minio)
    assert service["metadata"]["name"] == endpoint.hostname
    assert endpoint.port in {p["port"] for p in service["spec"]["ports"]}
    (deployment,) = documents("Deployment", minio)
    assert selects({"matchLabels": service["spec"]["selector"]}, deployment["spec"]["template"]["metadata"]["labels"])

    bucket, _ = split_s3(DEFAULTS.storage_uri)
    (job,) = documents("Job", minio)
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert f"mc mb --ignore-existing dev/{bucket}" in script
    assert DEFAULTS.s3.endpoint in script


def test_the_secret_example_has_the_keys_every_ray_pod_reads():
    (secret,) = documents("Secret", DEPLOY / "secret-s3.example.yaml")
    assert secret["metadata"]["name"] == DEFAULTS.s3.secret_name
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_the_render_options_example_in_the_readme_loads(tmp_path):
    from service.control.rayjob import load_render_options

    readme = (DEPLOY / "README.md").read_text()
    example = re.search(r"```yaml\n# render\.yaml\n(.*?)```", readme, re.S)
    assert example, "deploy/README.md lost its render.yaml example"
    (tmp_path / "render.yaml").write_text(example.group(1))
    options = load_render_options(tmp_path / "render.yaml")
    assert options.storage_uri == "s3://my-bucket/sweeps" and options.s3.endpoint == ""
    validate(render_rayjob(load_spec(REPO / "sweeps/cnn_structure.yaml"), options))
