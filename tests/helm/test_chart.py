"""The Helm chart helm/sweep-service, rendered by Helm's own engine (helm-sdkpy in .venv-helm).

tests/helm/render_chart.py runs a real `helm install` of the chart against a stand-in Kubernetes API
server (no cluster can run here) and returns the rendered manifest, the NOTES and the objects Helm
sent to the server. `make test` builds .venv-helm; without it these tests skip, and fail under CI=true.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from jsonschema import ValidationError as SchemaError  # what kubernetes_validate.validate raises

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "sweep-service"
RENDER_SCRIPT = Path(__file__).with_name("render_chart.py")
HELM_PYTHON = Path(os.environ.get("SWEEP_HELM_PYTHON", REPO / ".venv-helm" / "bin" / "python"))

NAMESPACE = "sweeps"
RELEASE = "sweeps"
TOKEN = {"auth": {"token": "test-token"}}
ALL_FEATURES = {
    **TOKEN,
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "sweepPodMonitors": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "s3": {"createSecret": True, "accessKeyId": "AKIDEXAMPLE", "secretAccessKey": "s3cr3t"},
}
CORE_KINDS = {"ServiceAccount", "Secret", "ConfigMap", "Role", "RoleBinding", "Service", "Deployment"}
MONITORING_API = "monitoring.coreos.com/v1"
# The shared contract's RenderOptions keys (config.yaml), and the chart values that set them.
RENDER_OPTIONS_KEYS = {"image", "storage_uri", "s3", "head", "worker", "ttl_seconds_after_finished",
                       "active_deadline_seconds", "backoff_limit"}
# The copies Helm can read (it reads no file outside the chart) and their originals; `make helm-files` syncs them.
CHART_FILE_COPIES = {
    "files/sweeps.json": "deploy/grafana/sweeps.json",
    "files/rules.yml": "deploy/prometheus/rules.yml",
    "files/podmonitors.yaml": "deploy/prometheus/podmonitors.yaml",
}


@pytest.fixture(scope="module", autouse=True)
def helm_engine():
    """The tests need .venv-helm with helm-sdkpy: CI fails without it, elsewhere the tests skip."""
    problem = None
    if not HELM_PYTHON.exists():
        problem = f"{HELM_PYTHON} does not exist"
    else:
        probe = subprocess.run([HELM_PYTHON, RENDER_SCRIPT, "version"], capture_output=True, text=True)
        if probe.returncode != 0:
            problem = f"helm-sdkpy does not load in {HELM_PYTHON}: {probe.stderr.strip()[-500:]}"
    if problem:
        message = f"no Helm engine: {problem}. `make test` builds .venv-helm (needs python3.12)."
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


class HelmFailed(Exception):
    pass


@functools.lru_cache(maxsize=None)
def _install(values_json: str, with_kuberay: bool) -> dict:
    command = [HELM_PYTHON, RENDER_SCRIPT, "install", str(CHART), "--values-json", values_json,
               "--namespace", NAMESPACE, "--release", RELEASE]
    if not with_kuberay:
        command.append("--no-kuberay")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise HelmFailed(result.stderr)
    rendered = json.loads(result.stdout)
    rendered["documents"] = [doc for doc in yaml.safe_load_all(rendered["manifest"]) if doc]
    return rendered


def install(values: dict, with_kuberay: bool = True) -> dict:
    """{"documents": rendered objects, "objects": what Helm sent to the API server, "notes": NOTES.txt}."""
    return _install(json.dumps(values, sort_keys=True), with_kuberay)


def objects(values: dict) -> list[dict]:
    return install(values)["documents"]


def kinds(values: dict) -> list[str]:
    return sorted(doc["kind"] for doc in objects(values))


def one(values: dict, kind: str, name: str | None = None) -> dict:
    matches = [doc for doc in objects(values)
               if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in matches]}"
    return matches[0]


def api_container(values: dict) -> dict:
    (container,) = one(values, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container["env"]}


def render_options(values: dict) -> dict:
    configmap = one(values, "ConfigMap", f"{RELEASE}-sweep-service")
    return yaml.safe_load(configmap["data"]["config.yaml"])


# ---- renders -------------------------------------------------------------------------------------

def test_lint_reports_no_warning_or_error():
    result = subprocess.run([HELM_PYTHON, RENDER_SCRIPT, "lint", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lint = json.loads(result.stdout)
    # Helm's severities: 1 info, 2 warning, 3 error. Lint gives no error text back, only where.
    problems = [message["Path"] for message in lint["Messages"] if message["Severity"] >= 2]
    assert lint["TotalChartsLinted"] == 1
    assert problems == [], f"helm lint found warnings/errors in {problems}"


def test_default_values_render_the_core_objects_and_helm_sends_them_all():
    rendered = install(TOKEN)
    assert set(kinds(TOKEN)) == CORE_KINDS
    sent = sorted((obj["kind"], obj["metadata"]["name"]) for obj in rendered["objects"])
    assert sent == sorted((doc["kind"], doc["metadata"]["name"]) for doc in rendered["documents"])
    assert all(obj["metadata"]["namespace"] == NAMESPACE for obj in rendered["objects"])


def test_all_optional_features_render():
    assert kinds(ALL_FEATURES) == sorted([
        *CORE_KINDS, "Secret", "ConfigMap", "ServiceMonitor", "PodMonitor", "PodMonitor", "PrometheusRule",
    ])


@pytest.mark.parametrize("feature, added", [
    ("serviceMonitor", ["ServiceMonitor"]),
    ("sweepPodMonitors", ["PodMonitor", "PodMonitor"]),
    ("prometheusRule", ["PrometheusRule"]),
    ("grafanaDashboard", ["ConfigMap"]),
])
def test_each_optional_feature_appears_only_when_enabled(feature, added):
    assert not [doc for doc in objects(TOKEN) if doc["apiVersion"] == MONITORING_API]
    assert not [doc for doc in objects(TOKEN) if "grafana_dashboard" in doc["metadata"].get("labels", {})]
    assert kinds({**TOKEN, feature: {"enabled": True}}) == sorted([*kinds(TOKEN), *added])


def test_without_a_token_install_fails_saying_how_to_set_one():
    with pytest.raises(HelmFailed) as failure:
        install({})
    message = str(failure.value)
    assert "the API needs a bearer token" in message
    assert "--set auth.existingSecret=" in message and "--set auth.token=" in message
    assert "kubectl create secret generic" in message
    assert "Traceback" not in message


def test_an_existing_token_secret_is_referenced_and_none_is_created():
    values = {"auth": {"existingSecret": "my-token", "secretKey": "api-token"}}
    assert "Secret" not in kinds(values)
    token_ref = env_of(api_container(values))["SWEEP_SERVICE_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token_ref == {"name": "my-token", "key": "api-token"}


def test_a_chart_made_token_secret_holds_the_token_the_api_reads():
    secret = one(TOKEN, "Secret")
    token_ref = env_of(api_container(TOKEN))["SWEEP_SERVICE_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token_ref["name"] == secret["metadata"]["name"]
    assert base64.b64decode(secret["data"][token_ref["key"]]).decode() == "test-token"


# The users file (service/control/api.py's Users) from a Secret the user brings: mounted, never created.
USERS = {"auth": {"tokensSecret": "sweep-api-users"}}
TOKENS_FILE = "/etc/sweep-service-auth/tokens.yaml"


def _auth_volume(values: dict) -> tuple[dict | None, dict | None]:
    pod = one(values, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = next((m for m in container["volumeMounts"] if m["name"] == "auth"), None)
    volume = next((v for v in pod["volumes"] if v["name"] == "auth"), None)
    return mount, volume


def test_a_tokens_secret_alone_is_mounted_read_only_and_named_by_the_env_var():
    from service.control.api import TOKEN_ENV, TOKENS_FILE_ENV

    env = env_of(api_container(USERS))
    assert env[TOKENS_FILE_ENV] == {"name": TOKENS_FILE_ENV, "value": TOKENS_FILE}
    assert TOKEN_ENV not in env  # no admin token was given: none is invented
    mount, volume = _auth_volume(USERS)
    # A directory mount (no subPath): Kubernetes then updates the file when the Secret changes.
    assert mount == {"name": "auth", "mountPath": TOKENS_FILE.rsplit("/", 1)[0], "readOnly": True}
    assert volume["secret"] == {"secretName": "sweep-api-users", "items": [{"key": "tokens.yaml", "path": "tokens.yaml"}]}
    assert "Secret" not in kinds(USERS)  # the user's Secret is referenced, the chart creates none
    notes = install(USERS)["notes"]
    assert "Users and roles come from Secret sweep-api-users" in notes and "SWEEPCTL_TOKEN=<your token>" in notes


def test_a_tokens_secret_and_the_admin_token_together_and_a_custom_key():
    values = {"auth": {"tokensSecret": "team-users", "tokensSecretKey": "users.yaml", "token": "test-token"}}
    env = env_of(api_container(values))
    assert env["SWEEP_SERVICE_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == f"{RELEASE}-sweep-service-token"
    assert env["SWEEP_SERVICE_TOKENS_FILE"]["value"] == TOKENS_FILE
    assert _auth_volume(values)[1]["secret"]["items"] == [{"key": "users.yaml", "path": "tokens.yaml"}]


def test_without_a_tokens_secret_nothing_is_mounted():
    assert "SWEEP_SERVICE_TOKENS_FILE" not in env_of(api_container(TOKEN))
    assert _auth_volume(TOKEN) == (None, None)
    assert "Users and roles" not in install(TOKEN)["notes"]


def test_without_any_token_the_failure_names_the_tokens_secret_too():
    with pytest.raises(HelmFailed, match="--set auth.tokensSecret="):
        install({})


@pytest.mark.parametrize("kubernetes_version", ["1.25", kubernetes_validate.latest_version()])
def test_the_deployment_with_a_tokens_secret_validates_against_the_kubernetes_schemas(kubernetes_version):
    kubernetes_validate.validate(one(USERS, "Deployment"), kubernetes_version, strict=True)


# ---- RBAC ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [TOKEN, ALL_FEATURES], ids=["defaults", "all-features"])
def test_rbac_grants_only_rayjob_verbs_in_the_release_namespace(values):
    assert not [doc for doc in objects(values) if doc["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = one(values, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["get", "list", "watch", "create", "delete"]},
        {"apiGroups": ["ray.io"], "resources": ["rayjobs/status"], "verbs": ["get"]},
    ]
    binding = one(values, "RoleBinding")
    pod_spec = one(values, "Deployment")["spec"]["template"]["spec"]
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod_spec["serviceAccountName"],
                                    "namespace": NAMESPACE}]
    assert one(values, "ServiceAccount")["metadata"]["name"] == pod_spec["serviceAccountName"]


# ---- the API's Deployment and Service ------------------------------------------------------------

def test_the_api_runs_non_root_on_a_read_only_root_filesystem():
    pod_spec = one(TOKEN, "Deployment")["spec"]["template"]["spec"]
    container = api_container(TOKEN)
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert (pod_spec["securityContext"]["runAsUser"], pod_spec["securityContext"]["runAsGroup"]) == (1000, 100)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # The one writable place: an emptyDir at /tmp (HOME points there too).
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    tmp_mount = next(mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp")
    assert volumes[tmp_mount["name"]] == {"name": tmp_mount["name"], "emptyDir": {}}
    assert env_of(container)["HOME"]["value"] == "/tmp"
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_the_api_listens_on_8000_with_probes_on_healthz_behind_a_cluster_ip_service():
    container = api_container(TOKEN)
    assert container["command"] == ["sweep-service", "--host", "0.0.0.0", "--port", "8000"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = one(TOKEN, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = one(TOKEN, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_the_api_gets_the_shared_contracts_environment():
    container = api_container(TOKEN)
    env = env_of(container)
    assert env["SWEEP_SERVICE_BACKEND"]["value"] == "kubernetes"
    assert env["SWEEP_SERVICE_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["SWEEP_SERVICE_CONFIG"]["value"] == "/etc/sweep-service/config.yaml"
    # config.yaml is the ConfigMap's key, mounted where SWEEP_SERVICE_CONFIG points.
    config_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/sweep-service")
    volumes = {v["name"]: v for v in one(TOKEN, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    configmap_name = volumes[config_mount["name"]]["configMap"]["name"]
    assert "config.yaml" in one(TOKEN, "ConfigMap", configmap_name)["data"]
    # The API reads summaries from the sweeps' storage with the sweeps' S3 credentials.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "sweep-s3", "key": key}


def test_the_s3_endpoint_and_addressing_style_reach_the_api():
    values = {**TOKEN, "config": {"s3": {"endpoint": "http://minio.sweeps.svc:9000", "addressingStyle": "path",
                                         "region": "eu-west-1"}}}
    env = env_of(api_container(values))
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.sweeps.svc:9000"
    assert env["SWEEP_S3_ADDRESSING_STYLE"]["value"] == "path"
    assert env["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"
    aws = env_of(api_container({**TOKEN, "config": {"s3": {"endpoint": "", "secretName": ""}}}))
    assert not {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"} & set(aws)  # AWS S3, credentials from the pod's identity


def test_the_pods_roll_when_the_configuration_changes():
    def checksum(values):
        return one(values, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum(TOKEN) != checksum({**TOKEN, "config": {"backoffLimit": 5}})


# ---- config.yaml: the service's RenderOptions ----------------------------------------------------

def test_config_yaml_has_the_contracts_keys_and_defaults_to_the_chart_image():
    config = render_options(TOKEN)
    assert set(config) == RENDER_OPTIONS_KEYS
    assert config["image"] == api_container(TOKEN)["image"] == "ghcr.io/sweep-service/sweep-service:0.1.0"
    assert config["s3"] == {"secret_name": "sweep-s3", "endpoint": "http://minio:9000", "region": "us-east-1",
                            "addressing_style": "path"}
    assert config["head"] == {"cpu": "2", "memory": "8Gi"}
    assert config["worker"] == {"memory": "16Gi", "node_selector": {}, "tolerations": []}
    assert (config["ttl_seconds_after_finished"], config["active_deadline_seconds"], config["backoff_limit"]) \
        == (3600, 86400, 2)


def test_config_values_become_snake_case_render_options():
    gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    values = {**TOKEN, "image": {"tag": "0.2.0"}, "config": {
        "image": "registry.example/sweeps:cuda", "storageUri": "s3://team/sweeps",
        "s3": {"secretName": "team-s3", "endpoint": "http://minio:9000", "addressingStyle": "path"},
        "head": {"cpu": 4, "memory": "16Gi"},
        "worker": {"memory": "64Gi", "nodeSelector": {"nvidia.com/gpu.present": "true"},
                   "tolerations": [gpu_toleration]},
        "ttlSecondsAfterFinished": 60, "activeDeadlineSeconds": 7200, "backoffLimit": 0,
    }}
    config = render_options(values)
    assert config == {
        "image": "registry.example/sweeps:cuda",
        "storage_uri": "s3://team/sweeps",
        "s3": {"secret_name": "team-s3", "endpoint": "http://minio:9000", "region": "us-east-1",
               "addressing_style": "path"},
        "head": {"cpu": "4", "memory": "16Gi"},
        "worker": {"memory": "64Gi", "node_selector": {"nvidia.com/gpu.present": "true"},
                   "tolerations": [gpu_toleration]},
        "ttl_seconds_after_finished": 60, "active_deadline_seconds": 7200, "backoff_limit": 0,
    }
    assert api_container(values)["image"] == "ghcr.io/sweep-service/sweep-service:0.2.0"


@pytest.mark.parametrize("values", [
    TOKEN,
    {**TOKEN, "config": {"activeDeadlineSeconds": None, "s3": {"endpoint": "", "addressingStyle": "auto"},
                         "worker": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}},
], ids=["defaults", "no-deadline-aws-gpu-tolerations"])
def test_the_renderer_takes_config_yaml_and_gives_ray_pods_the_apis_s3_settings(values):
    from service.core.loading import load_spec
    from service.control.rayjob import RenderOptions, render_rayjob

    options = RenderOptions.model_validate(render_options(values))
    rayjob = render_rayjob(load_spec(REPO / "sweeps" / "quickstart.yaml", []), options)
    (head,) = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["image"] == api_container(values)["image"]
    assert rayjob["spec"].get("activeDeadlineSeconds") == values.get("config", {}).get("activeDeadlineSeconds", 86400)

    def s3_env(container):
        return [item for item in container["env"] if item["name"].startswith(("AWS_", "SWEEP_S3_"))]

    assert s3_env(head)
    assert sorted(s3_env(head), key=str) == sorted(s3_env(api_container(values)), key=str)


# ---- S3 credentials ------------------------------------------------------------------------------

def test_the_chart_creates_the_s3_secret_only_when_asked():
    assert [doc["metadata"]["name"] for doc in objects(TOKEN) if doc["kind"] == "Secret"] == [
        f"{RELEASE}-sweep-service-token"]
    secret = one(ALL_FEATURES, "Secret", "sweep-s3")
    assert {key: base64.b64decode(value).decode() for key, value in secret["data"].items()} == {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}


def test_creating_the_s3_secret_without_keys_fails_saying_which_value_is_missing():
    with pytest.raises(HelmFailed, match="s3.accessKeyId: set it with s3.createSecret=true"):
        install({**TOKEN, "s3": {"createSecret": True}})


# ---- schemas -------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [TOKEN, ALL_FEATURES], ids=["defaults", "all-features"])
@pytest.mark.parametrize("kubernetes_version", ["1.25", kubernetes_validate.latest_version()])
def test_core_objects_validate_against_the_kubernetes_schemas(values, kubernetes_version):
    core = [doc for doc in objects(values) if doc["apiVersion"] != MONITORING_API]
    assert len(core) >= len(CORE_KINDS)
    problems = []
    for doc in core:
        try:
            kubernetes_validate.validate(doc, kubernetes_version, strict=True)
        except SchemaError as error:
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {error.message} at {list(error.path)}")
    assert problems == []


# ---- monitoring: the chart's copies of deploy/ -----------------------------------------------------

@pytest.mark.parametrize("copy, original", CHART_FILE_COPIES.items())
def test_the_charts_copies_equal_their_originals(copy, original):
    assert (CHART / copy).read_bytes() == (REPO / original).read_bytes(), (
        f"helm/sweep-service/{copy} differs from {original}: run `make helm-files` to copy it again")


def test_the_prometheus_rule_carries_the_alert_groups_untouched_by_helm():
    rule = one(ALL_FEATURES, "PrometheusRule")
    original = yaml.safe_load((REPO / "deploy/prometheus/rules.yml").read_text())
    assert rule["spec"] == original  # {{ $labels.sweep }} and friends arrive as Prometheus templates
    assert "{{ $labels.sweep }}" in json.dumps(rule)


def test_the_sweep_podmonitors_watch_the_release_namespace_with_the_originals_endpoints():
    originals = {doc["metadata"]["name"]: doc for doc in
                 yaml.safe_load_all((REPO / "deploy/prometheus/podmonitors.yaml").read_text())}
    rendered = [doc for doc in objects(ALL_FEATURES) if doc["kind"] == "PodMonitor"]
    assert sorted(doc["metadata"]["name"] for doc in rendered) == sorted(
        f"{RELEASE}-sweep-service-{name}" for name in originals)
    for doc in rendered:
        original = originals[doc["metadata"]["name"].removeprefix(f"{RELEASE}-sweep-service-")]
        assert doc["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert {**doc["spec"], "namespaceSelector": None} == {**original["spec"], "namespaceSelector": None}


def test_the_service_monitor_scrapes_the_api_service():
    monitor = one(ALL_FEATURES, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["selector"]["matchLabels"] == one(ALL_FEATURES, "Service")["spec"]["selector"]


def test_the_dashboard_configmap_holds_the_dashboard_for_grafanas_sidecar():
    dashboard = one(ALL_FEATURES, "ConfigMap", f"{RELEASE}-sweep-service-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (REPO / "deploy/grafana/sweeps.json").read_text()
    assert "${DS_PROMETHEUS}" in shipped  # what Grafana's import replaces with the data source picked
    # The sidecar provisions the file with no import step: the chart fills in "default" (Grafana's
    # default data source) as the `datasource` variable's starting value; nothing else differs.
    provisioned = json.loads(dashboard["data"]["sweeps.json"])
    assert "${DS_" not in dashboard["data"]["sweeps.json"]
    assert provisioned == json.loads(shipped.replace("${DS_PROMETHEUS}", "default"))
    variables = {v["name"]: v for v in provisioned["templating"]["list"]}
    assert variables["datasource"]["current"] == {"selected": False, "text": "default", "value": "default"}
    panels = [p for p in provisioned["panels"] if p["type"] != "row"]
    assert {p["datasource"]["uid"] for p in panels} == {"${datasource}"}  # every panel follows the variable


# ---- NOTES ---------------------------------------------------------------------------------------

def test_notes_warn_when_the_cluster_has_no_kuberay():
    assert "install the KubeRay operator" in install(TOKEN, with_kuberay=False)["notes"]
    notes = install(TOKEN)["notes"]
    assert "install the KubeRay operator" not in notes
    assert f"port-forward svc/{RELEASE}-sweep-service" in notes


# ---- the web UI: Service, Ingress, NOTES, secure cookies ------------------------------------------

UI_HOST = "sweeps.example.com"
INGRESS_TLS = {**TOKEN, "ingress": {
    "enabled": True, "className": "nginx", "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
    "hosts": [{"host": UI_HOST, "paths": [{"path": "/", "pathType": "Prefix"}]}],
    "tls": [{"secretName": "sweeps-tls", "hosts": [UI_HOST]}],
}}
INGRESS_PLAIN = {**TOKEN, "ingress": {"enabled": True, "hosts": [{"host": "sweeps.internal"}]}}
SECURE_COOKIES_ENV = "SWEEP_SERVICE_SECURE_COOKIES"  # the app reads it: Secure session cookies
FULLNAME = f"{RELEASE}-sweep-service"


def ingress_backends(values: dict) -> list[dict]:
    return [path["backend"] for rule in one(values, "Ingress")["spec"]["rules"] for path in rule["http"]["paths"]]


def test_there_is_no_ingress_by_default():
    assert "Ingress" not in kinds(TOKEN)
    assert not [obj for obj in install(TOKEN)["objects"] if obj["kind"] == "Ingress"]
    assert "Ingress" not in kinds({**TOKEN, "ingress": {"tls": [{"secretName": "x", "hosts": [UI_HOST]}]}})


@pytest.mark.parametrize("kubernetes_version", ["1.25", kubernetes_validate.latest_version()])
def test_an_ingress_with_tls_validates_and_sends_every_path_to_the_services_port(kubernetes_version):
    rendered = install(INGRESS_TLS)
    ingress, service = one(INGRESS_TLS, "Ingress"), one(INGRESS_TLS, "Service")
    for doc in (ingress, service, one(INGRESS_TLS, "Deployment")):
        kubernetes_validate.validate(doc, kubernetes_version, strict=True)
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["metadata"]["name"] == FULLNAME and ingress["metadata"]["namespace"] == NAMESPACE
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": [UI_HOST], "secretName": "sweeps-tls"}]
    assert ingress["spec"]["rules"] == [{"host": UI_HOST, "http": {"paths": [{
        "path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": service["metadata"]["name"],
                                "port": {"number": service["spec"]["ports"][0]["port"]}}},
    }]}}]
    assert ("Ingress", FULLNAME) in [(obj["kind"], obj["metadata"]["name"]) for obj in rendered["objects"]]


def test_an_ingress_defaults_its_path_and_path_type_and_may_omit_the_host_and_class():
    values = {**TOKEN, "ingress": {"enabled": True, "hosts": [{"host": "sweeps.internal"}, {}],
                                   "tls": [{"secretName": "wildcard-tls"}]}}
    ingress = one(values, "Ingress")
    kubernetes_validate.validate(ingress, kubernetes_validate.latest_version(), strict=True)
    assert "ingressClassName" not in ingress["spec"] and "annotations" not in ingress["metadata"]
    assert ingress["spec"]["tls"] == [{"secretName": "wildcard-tls"}]
    assert [rule.get("host") for rule in ingress["spec"]["rules"]] == ["sweeps.internal", None]
    assert [(path["path"], path["pathType"]) for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]] \
        == [("/", "Prefix"), ("/", "Prefix")]


def test_an_ingress_without_hosts_fails_saying_so():
    with pytest.raises(HelmFailed, match="ingress.hosts: give the Ingress at least one host"):
        install({**TOKEN, "ingress": {"enabled": True, "hosts": []}})


def test_the_service_honours_its_values_and_the_ingress_follows_its_port():
    assert "annotations" not in one(TOKEN, "Service")["metadata"]
    annotations = {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"}
    values = {**INGRESS_PLAIN, "service": {"type": "LoadBalancer", "port": 9000, "annotations": annotations}}
    service = one(values, "Service")
    kubernetes_validate.validate(service, kubernetes_validate.latest_version(), strict=True)
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["metadata"]["annotations"] == annotations
    assert service["spec"]["ports"] == [{"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}]
    assert ingress_backends(values) == [{"service": {"name": FULLNAME, "port": {"number": 9000}}}]


def test_notes_say_to_port_forward_and_log_in_with_the_token_secret_by_default():
    notes = install(TOKEN)["notes"]
    assert f"kubectl -n {NAMESPACE} port-forward svc/{FULLNAME} 8080:80" in notes
    assert "open http://127.0.0.1:8080/" in notes
    assert f"get secret {FULLNAME}-token -o jsonpath='{{.data.token}}' | base64 -d" in notes
    assert "export SWEEPCTL_SERVER=http://127.0.0.1:8080" in notes
    assert "https://" not in notes
    assert "8080:9000" in install({**TOKEN, "service": {"port": 9000}})["notes"]
    # An existing token Secret, a key with a dot (escaped for jsonpath).
    notes = install({"auth": {"existingSecret": "my-token", "secretKey": "api.token"}})["notes"]
    assert "get secret my-token -o jsonpath='{.data.api\\.token}'" in notes


def test_notes_send_a_tokens_file_user_to_their_own_token():
    notes = install(USERS)["notes"]
    assert "get secret" not in notes  # the users' Secret holds hashes, not tokens
    assert "your own user's token: Secret sweep-api-users (key tokens.yaml)" in notes


def test_notes_give_the_ingress_urls_https_with_tls():
    notes = install(INGRESS_TLS)["notes"]
    assert f"https://{UI_HOST}/" in notes and "port-forward" not in notes
    assert f"export SWEEPCTL_SERVER=https://{UI_HOST}\n" in notes
    notes = install(INGRESS_PLAIN)["notes"]
    assert "http://sweeps.internal/" in notes and "https://" not in notes and "port-forward" not in notes


@pytest.mark.parametrize("values, secure", [
    (TOKEN, False),
    (INGRESS_TLS, True),
    (INGRESS_PLAIN, False),
    ({**TOKEN, "ingress": {"enabled": False, "tls": [{"secretName": "x", "hosts": [UI_HOST]}]}}, False),
    ({**TOKEN, "ui": {"secureCookies": True}}, True),  # e.g. TLS ends at a load balancer in front
    ({**INGRESS_TLS, "ui": {"secureCookies": False}}, False),
], ids=["defaults", "ingress-tls", "ingress-plain", "tls-but-no-ingress", "forced-on", "forced-off"])
def test_session_cookies_are_secure_when_the_ui_is_served_over_tls(values, secure):
    env = env_of(api_container(values))
    assert env.get(SECURE_COOKIES_ENV) == ({"name": SECURE_COOKIES_ENV, "value": "1"} if secure else None)


def test_a_bad_secure_cookies_value_fails_saying_which_are_allowed():
    with pytest.raises(HelmFailed, match="ui.secureCookies: auto, true or false"):
        install({**TOKEN, "ui": {"secureCookies": "yes"}})


# ---- values.yaml ---------------------------------------------------------------------------------

def undocumented_values(values_yaml: str) -> list[str]:
    """Dotted paths of values without a `# --` comment, on themselves or on a block holding them."""
    undocumented, path, documented_blocks, comment = [], [], [], None
    for line in values_yaml.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment = stripped if stripped.startswith("# --") else comment
            continue
        if not stripped or stripped.startswith("-"):
            comment = None
            continue
        indent = len(line) - len(line.lstrip())
        key, _, inline = stripped.partition(":")
        path = [(i, k) for i, k in path if i < indent] + [(indent, key)]
        documented_blocks = [i for i in documented_blocks if i < indent]
        if comment:
            documented_blocks.append(indent)
        elif inline.strip() and not documented_blocks:
            undocumented.append(".".join(k for _, k in path))
        comment = None
    return undocumented


def test_every_value_is_documented():
    assert undocumented_values((CHART / "values.yaml").read_text()) == []
    assert undocumented_values("a:\n  # -- documented\n  b: 1\n  c: 2\n") == ["a.c"]  # the check can fail
