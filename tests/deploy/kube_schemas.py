"""Validate Kubernetes objects the way an API server with strict field validation would.

- ray.io objects against KubeRay's CRD (openAPIV3Schema of tests/deploy/schemas/kuberay/), made strict:
  the API server prunes or (kubectl's default, strict field validation) rejects fields a structural
  schema does not declare, so every object schema without ``x-kubernetes-preserve-unknown-fields``
  gets ``additionalProperties: false``. A CRD types embedded ``metadata`` as a bare object; the API
  server checks it as ObjectMeta, so it is checked against Kubernetes' own ObjectMeta schema here.
- core objects (Deployment, Service, Secret, PVC, Job, ...) with kubernetes-validate, strict.
- Prometheus Operator objects have no schema here: ``check_monitoring`` checks their shape.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
# KubeRay's generated CRDs (controller-gen v0.16.5), vendored so a clean clone tests anywhere.
KUBERAY_SCHEMAS = Path(__file__).resolve().parent / "schemas" / "kuberay"
# The oldest Kubernetes minor the manifests target (kubernetes-validate picks its nearest schema).
KUBERNETES_VERSION = "1.33.0"
_DEFINITIONS_URI = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = {"$ref": f"{_DEFINITIONS_URI}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


class InvalidManifest(AssertionError):
    pass


def load_documents(path: Path) -> list[dict]:
    """The Kubernetes objects of a YAML file (documents with apiVersion and kind)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [d for d in docs if isinstance(d, dict) and "apiVersion" in d and "kind" in d]


def validate(obj: dict) -> None:
    """Raise InvalidManifest naming the field path of the first problem."""
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    if group == "ray.io":
        _validate_crd(obj)
    elif group == "monitoring.coreos.com":
        check_monitoring(obj)
    else:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise InvalidManifest(f"{_name(obj)}: {_where(err)}: {err.message}") from None
        except kubernetes_validate.SchemaNotFoundError as err:
            raise InvalidManifest(f"{_name(obj)}: {err.message}") from None


def _validate_crd(obj: dict) -> None:
    validator = _crd_validator(obj["kind"], obj["apiVersion"].split("/")[1])
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        raise InvalidManifest(f"{_name(obj)}: {_where(error)}: {error.message}")


@functools.cache
def _crd_validator(kind: str, version: str) -> jsonschema.Validator:
    path = KUBERAY_SCHEMAS / f"ray.io_{kind.lower()}s.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no CRD schema for {kind} at {path}: copy KubeRay's ray.io_{kind.lower()}s.yaml CRD there"
        )
    crd = yaml.safe_load(path.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict(served["schema"]["openAPIV3Schema"])
    registry = Registry().with_resource(_DEFINITIONS_URI, Resource.from_contents(_definitions()))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def strict(schema: dict, field: str | None = None) -> dict:
    """The CRD schema as the API server enforces it (see the module docstring)."""
    node = copy.copy(schema)
    if field == "metadata" and node.get("type") == "object" and "properties" not in node:
        return OBJECT_META
    if "properties" in node:
        node["properties"] = {name: strict(sub, name) for name, sub in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = strict(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = strict(node["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            node[key] = [strict(sub) for sub in node[key]]
    return node


@functools.cache
def _definitions() -> dict:
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    version = "v" + KUBERNETES_VERSION + "-local-strict"
    return json.loads((root / version / "_definitions.json").read_text())


def check_monitoring(obj: dict) -> None:
    """Prometheus Operator objects: the API group/version and the parts our stack relies on."""
    name = _name(obj)
    if obj["apiVersion"] != "monitoring.coreos.com/v1" or obj["kind"] not in MONITORING_KINDS:
        raise InvalidManifest(f"{name}: unexpected apiVersion/kind {obj['apiVersion']}/{obj['kind']}")
    if not obj.get("metadata", {}).get("name"):
        raise InvalidManifest(f"{name}: metadata.name is missing")
    spec = obj.get("spec") or {}
    if obj["kind"] == "PodMonitor":
        endpoints = spec.get("podMetricsEndpoints") or []
        if not spec.get("selector") or not endpoints or not all(e.get("port") for e in endpoints):
            raise InvalidManifest(f"{name}: a PodMonitor needs a selector and named-port podMetricsEndpoints")
    if obj["kind"] == "PrometheusRule":
        rules = [r for g in spec.get("groups") or [] for r in g.get("rules") or []]
        if not rules or not all(r.get("expr") and (r.get("alert") or r.get("record")) for r in rules):
            raise InvalidManifest(f"{name}: every rule needs expr and alert (or record)")


def _name(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(object)"
