"""The Kubernetes manifests render with kubectl's kustomize, validate against the API's schemas
(and KEDA's and prometheus-operator's for their kinds), cover every workload of the registry, and
agree with the Envoy bootstrap, the settings and compose.yaml they are derived beside."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from services.runtime.registry import EDGE, SERVICES
from services.runtime.settings import CommonSettings, Env
from services.stack.kubernetes_overlays import TENANT, TENANT_LABEL, TENANT_NAMESPACE
from services.stack.kubernetes_workloads import SECRET_NAME, envoy_config_text
from services.stack.secrets import GENERATED
from tests.deploy.manifests import (
    KUSTOMIZATIONS,
    REPO,
    Manifest,
    coverage_problems,
    rendered,
    required_workloads,
    schema_errors,
)


def _one(documents: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    [found] = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _containers(documents: tuple[Manifest, ...]) -> list[tuple[str, Manifest]]:
    return [
        (d["metadata"]["name"], container)
        for d in documents
        if d["kind"] == "Deployment"
        for container in d["spec"]["template"]["spec"]["containers"]
    ]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_document_validates_against_its_schema(kustomization: str) -> None:
    documents = rendered(kustomization)
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "ScaledObject", "ServiceMonitor", "NetworkPolicy"} <= kinds
    errors = [error for document in documents for error in schema_errors(document)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_workload_is_probed_sized_budgeted_fenced_and_scaled(kustomization: str) -> None:
    problems = coverage_problems(list(rendered(kustomization)), required_workloads())
    assert not problems, "\n".join(problems)


def test_the_schemas_refuse_what_the_api_server_would() -> None:
    documents = rendered("base")
    deployment = copy.deepcopy(_one(documents, "Deployment", "orchestrator"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    assert schema_errors(deployment)
    scaled = copy.deepcopy(_one(documents, "ScaledObject", "agent-proxy"))
    scaled["spec"]["minReplicas"] = 2  # the HPA's spelling, not KEDA's
    assert schema_errors(scaled)
    monitor = copy.deepcopy(_one(documents, "ServiceMonitor", "edge"))
    monitor["spec"]["endpoints"][0]["interval"] = 15
    assert schema_errors(monitor)


def test_envoy_reaches_every_upstream_by_a_headless_service_of_that_name_and_port() -> None:
    documents = rendered("base")
    config_map = _one(documents, "ConfigMap", "envoy-config")
    assert config_map["data"]["envoy.yaml"] == envoy_config_text()
    bootstrap = yaml.safe_load(config_map["data"]["envoy.yaml"])
    upstreams = {
        (
            endpoint["endpoint"]["address"]["socket_address"]["address"],
            endpoint["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for cluster in bootstrap["static_resources"]["clusters"]
        for group in cluster["load_assignment"]["endpoints"]
        for endpoint in group["lb_endpoints"]
    }
    assert len(upstreams) >= 7
    for host, port in upstreams:
        service = _one(documents, "Service", host)
        assert service["spec"].get("clusterIP") == "None", f"{host} must be headless for STRICT_DNS"
        assert port in {p["port"] for p in service["spec"]["ports"]}, (host, port)


def test_the_shutdown_grace_is_the_settings_default_and_pods_outlast_it() -> None:
    documents = rendered("base")
    grace = CommonSettings.from_env(Env({})).shutdown_grace_seconds
    common = _one(documents, "ConfigMap", "macp-common")["data"]
    assert float(common["MACP_SHUTDOWN_GRACE_SECONDS"]) == grace
    for document in documents:
        if document["kind"] != "Deployment":
            continue
        pod = document["spec"]["template"]["spec"]
        prestop = (
            pod["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        )
        assert pod["terminationGracePeriodSeconds"] > prestop + (
            grace if document["metadata"]["name"] != "envoy" else 0
        )


def test_every_secret_a_pod_reads_is_in_the_base_secret_and_production_ships_none() -> None:
    base = rendered("base")
    keys = set(_one(base, "Secret", SECRET_NAME)["stringData"])
    for name, container in _containers(base):
        for variable in container.get("env", []):
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                assert reference["name"] == SECRET_NAME, (name, reference)
                assert reference["key"] in keys, (name, reference)
    for overlay in ("overlays/production", "overlays/enterprise-tenant"):
        assert not [d for d in rendered(overlay) if d["kind"] == "Secret"], overlay


def test_each_process_gets_the_generated_secrets_compose_gives_it_and_no_other() -> None:
    compose: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    for name, container in _containers(rendered("base")):
        if name not in compose["services"]:
            continue
        given = set(compose["services"][name].get("environment") or {}) & set(GENERATED)
        read = {v["name"] for v in container.get("env", []) if "valueFrom" in v} & set(GENERATED)
        assert read == given, name


def test_the_enterprise_tenant_lives_in_its_own_namespace_and_scales_on_its_own_metrics() -> None:
    documents = rendered("overlays/enterprise-tenant")
    for document in documents:
        metadata = document["metadata"]
        assert metadata["labels"][TENANT_LABEL] == TENANT, (document["kind"], metadata["name"])
        if document["kind"] != "Namespace":
            assert metadata["namespace"] == TENANT_NAMESPACE, (document["kind"], metadata["name"])
    assert [d["metadata"]["name"] for d in documents if d["kind"] == "Namespace"] == [TENANT_NAMESPACE]
    for scaled in (d for d in documents if d["kind"] == "ScaledObject"):
        query = scaled["spec"]["triggers"][0]["metadata"]["query"]
        assert f'namespace="{TENANT_NAMESPACE}"' in query
    for policy in (d for d in documents if d["metadata"]["name"].startswith("egress-store-")):
        assert policy["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"]


def test_each_process_runs_the_command_compose_runs_and_envoy_the_same_image() -> None:
    compose: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    commands = dict(_containers(rendered("base")))
    for name in (*(spec.name for spec in SERVICES), EDGE.name):
        assert commands[name]["command"] == compose["services"][name]["command"], name
    assert commands["envoy"]["image"] == compose["services"]["envoy"]["image"]
