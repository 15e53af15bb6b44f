"""Render or lint a Helm chart with Helm's own Go engine (helm-sdkpy); run it with .venv-helm's Python 3.12.

    render_chart.py install CHART_DIR [--values-json JSON] [--namespace NS] [--release NAME] [--no-kuberay]
        prints {"manifest": ..., "notes": ..., "objects": [...]} as JSON
    render_chart.py lint CHART_DIR      prints Helm's lint result as JSON
    render_chart.py version             prints helm-sdkpy's version

helm-sdkpy has no `helm template` and no dry-run install, so `install` runs a real `helm install`
against a stand-in Kubernetes API server on 127.0.0.1 (none can run here): Helm discovers the
API, renders every template, checks for conflicts and POSTs each object, exactly as against a
cluster. The stand-in records the objects; Helm's release holds the rendered manifest and NOTES.
Releases are kept in memory (HELM_DRIVER=memory), so the stand-in needs no Secret storage.
A template error (e.g. a `fail`/`required`) exits 1 with Helm's message on stderr.

Only the standard library and helm_sdkpy: this runs outside the project's venv.
"""

from __future__ import annotations

import argparse
import atexit
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# What the stand-in cluster serves: (group, version) -> [(plural, Kind)]. Prometheus Operator's and
# KubeRay's CRDs are there, as on a cluster prepared as deploy/README.md says.
CORE_RESOURCES = {
    ("", "v1"): [("configmaps", "ConfigMap"), ("secrets", "Secret"), ("services", "Service"),
                 ("serviceaccounts", "ServiceAccount")],
    ("apps", "v1"): [("deployments", "Deployment")],
    ("networking.k8s.io", "v1"): [("ingresses", "Ingress"), ("ingressclasses", "IngressClass")],
    ("rbac.authorization.k8s.io", "v1"): [("roles", "Role"), ("rolebindings", "RoleBinding"),
                                          ("clusterroles", "ClusterRole"),
                                          ("clusterrolebindings", "ClusterRoleBinding")],
    ("monitoring.coreos.com", "v1"): [("servicemonitors", "ServiceMonitor"), ("podmonitors", "PodMonitor"),
                                      ("prometheusrules", "PrometheusRule")],
}
KUBERAY_RESOURCES = {("ray.io", "v1"): [("rayjobs", "RayJob"), ("rayclusters", "RayCluster")]}
CLUSTER_SCOPED = {"clusterroles", "clusterrolebindings", "ingressclasses"}


def group_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


def discovery_path(group: str, version: str) -> str:
    return f"/apis/{group}/{version}" if group else f"/api/{version}"


class StandInApiServer(ThreadingHTTPServer):
    """Answers discovery, says 404 to every GET of an object (nothing exists yet) and records POSTs."""

    def __init__(self, resources: dict):
        self.resources = resources
        self.created: list[dict] = []
        super().__init__(("127.0.0.1", 0), StandInHandler)


class StandInHandler(BaseHTTPRequestHandler):
    server: StandInApiServer

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass

    def reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.path.split("?")[0]
        resources = self.server.resources
        if path == "/version":
            return self.reply(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"})
        if path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            groups = [
                {"name": group, "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                 "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version}}
                for group, version in resources if group
            ]
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for (group, version), kinds in resources.items():
            if path == discovery_path(group, version):
                return self.reply(200, {
                    "kind": "APIResourceList", "groupVersion": group_version(group, version),
                    "resources": [
                        {"name": plural, "singularName": kind.lower(), "kind": kind,
                         "namespaced": plural not in CLUSTER_SCOPED,
                         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                        for plural, kind in kinds
                    ],
                })
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                         "code": 404, "message": f"{path} not found"})

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.created.append(body)
        self.reply(201, body)


def kubeconfig_for(port: int, namespace: str) -> str:
    return f"""apiVersion: v1
kind: Config
clusters: [{{name: stand-in, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: stand-in, user: {{token: stand-in}}}}]
contexts: [{{name: stand-in, context: {{cluster: stand-in, user: stand-in, namespace: {namespace}}}}}]
current-context: stand-in
"""


def install(chart: str, values: dict, namespace: str, release: str, with_kuberay: bool) -> dict:
    import helm_sdkpy

    resources = {**CORE_RESOURCES, **(KUBERAY_RESOURCES if with_kuberay else {})}
    server = StandInApiServer(resources)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # helm-sdkpy takes a kubeconfig's content (YAML) as well as a path.
        kubeconfig = kubeconfig_for(server.server_port, namespace)
        config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kubeconfig)
        result = asyncio.run(helm_sdkpy.Install(config).run(release, chart, values=values, wait=False))
    finally:
        server.shutdown()
    return {"manifest": result["manifest"], "notes": result.get("info", {}).get("notes", ""),
            "objects": server.created}


def lint(chart: str) -> dict:
    import helm_sdkpy

    return asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(chart))


def with_helm_environment() -> None:
    """Re-exec with HELM_DRIVER=memory and Helm's homes in a temp dir.

    The Go runtime inside helm-sdkpy reads the environment the process started with, so setting
    os.environ here would be too late for it.
    """
    if os.environ.get("HELM_DRIVER") == "memory":
        return
    home = tempfile.mkdtemp(prefix="helm-home-")
    env = dict(os.environ, HELM_DRIVER="memory", HELM_CACHE_HOME=f"{home}/cache",
               HELM_CONFIG_HOME=f"{home}/config", HELM_DATA_HOME=f"{home}/data", RENDER_CHART_HOME=home)
    env.pop("KUBECONFIG", None)
    env.pop("KUBERNETES_SERVICE_HOST", None)  # never mistake this for an in-cluster run
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    install_cmd = sub.add_parser("install")
    install_cmd.add_argument("chart")
    install_cmd.add_argument("--values-json", default="{}")
    install_cmd.add_argument("--namespace", default="sweeps")
    install_cmd.add_argument("--release", default="sweeps")
    install_cmd.add_argument("--no-kuberay", action="store_true", help="a cluster without KubeRay's CRDs")
    lint_cmd = sub.add_parser("lint")
    lint_cmd.add_argument("chart")
    sub.add_parser("version")
    args = parser.parse_args()

    with_helm_environment()
    # the temp homes made before the re-exec: removed when this (re-exec'd) process ends
    atexit.register(shutil.rmtree, os.environ.get("RENDER_CHART_HOME", ""), ignore_errors=True)
    import helm_sdkpy

    try:
        if args.command == "version":
            print(helm_sdkpy.__version__)
        elif args.command == "lint":
            print(json.dumps(lint(args.chart)))
        else:
            values = json.loads(args.values_json)
            print(json.dumps(install(args.chart, values, args.namespace, args.release, not args.no_kuberay)))
    except helm_sdkpy.HelmError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
