"""NetworkPolicies: nothing moves in the namespace but what the mesh needs.

Everything is denied first, both ways. Then: anyone may reach Envoy's front listener; only Envoy
reaches a service's gRPC port (and the edge's HTTP port); only MACP processes reach Envoy's mesh
listener; Prometheus reaches the metrics ports; each process reaches DNS, and only its own stores
by their ports (the registry's `dependencies`: the stores are outside the namespace, given by URL,
so the rules are by port unless an overlay pins an address block); the few that call outside the
cluster (kubernetes_workloads.REACHES_OUTSIDE) reach HTTPS anywhere. Policies add up, so a pod may
do what any policy selecting it allows.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.stack.kubernetes_workloads import (
    ENVOY_NAME,
    LABEL_COMPONENT,
    LABEL_NAME,
    LABEL_OUTSIDE,
    LABEL_PART_OF,
    LABEL_STORE,
    PART_OF,
    TOOL_GATEWAY,
    Manifest,
    Workload,
)

# The ports each kind of store listens on (S3: HTTPS, or a MinIO's plain 9000).
STORE_PORTS: dict[str, tuple[int, ...]] = {
    "postgres": (5432,),
    "redis": (6379,),
    "kafka": (9092,),
    "s3": (443, 9000),
}
OUTSIDE_HTTPS_PORT = 443
# Where Prometheus runs: prometheus-operator's pods in a `monitoring` namespace (docs/deploy.md).
PROMETHEUS_PEER: Manifest = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {LABEL_NAME: "prometheus"}},
}
DNS_PEER: Manifest = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
# The processes that call through the mesh: every service and the edge.
MESH_CLIENTS: Manifest = {
    "podSelector": {
        "matchLabels": {LABEL_PART_OF: PART_OF},
        "matchExpressions": [{"key": LABEL_COMPONENT, "operator": "In", "values": ["service", "edge"]}],
    }
}


def _policy(
    name: str, selector: Manifest, ingress: list[Manifest] | None, egress: list[Manifest] | None
) -> Manifest:
    spec: Manifest = {"podSelector": selector, "policyTypes": []}
    if ingress is not None:
        spec["policyTypes"].append("Ingress")
        spec["ingress"] = ingress
    if egress is not None:
        spec["policyTypes"].append("Egress")
        spec["egress"] = egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": {LABEL_PART_OF: PART_OF}},
        "spec": spec,
    }


def _ports(numbers: Iterable[int], protocol: str = "TCP") -> list[Manifest]:
    return [{"protocol": protocol, "port": number} for number in numbers]


def _pods(name: str) -> Manifest:
    return {"podSelector": {"matchLabels": {LABEL_NAME: name}}}


def baseline() -> list[Manifest]:
    """Deny everything in the namespace, then let every pod resolve names."""
    dns = {"to": [DNS_PEER], "ports": _ports([53], "UDP") + _ports([53])}
    return [
        _policy("default-deny", {}, [], []),
        _policy("allow-dns", {}, None, [dns]),
    ]


def _ingress(workload: Workload, everything: tuple[Workload, ...]) -> list[Manifest]:
    rules: list[Manifest] = []
    if workload.component in ("service", "edge"):
        serving = [port.number for port in workload.ports if port.name in ("grpc", "http")]
        rules.append({"from": [_pods(ENVOY_NAME)], "ports": _ports(serving)})
    elif workload.component == "proxy":
        rules.append({"ports": _ports([workload.port("front")])})  # from anywhere
        rules.append({"from": [MESH_CLIENTS], "ports": _ports([workload.port("mesh")])})
    elif workload.component == "example-tool-server":
        rules.append({"from": [_pods(TOOL_GATEWAY)], "ports": _ports([workload.port("http")])})
    if workload.metrics_port is not None:
        rules.append({"from": [PROMETHEUS_PEER], "ports": _ports([workload.port(workload.metrics_port)])})
    return rules


def _egress(workload: Workload, everything: tuple[Workload, ...]) -> list[Manifest]:
    """In-cluster destinations only; stores and the outside are the shared policies'."""
    envoy = next(other for other in everything if other.name == ENVOY_NAME)
    if workload.component in ("service", "edge"):
        rules = [{"to": [_pods(ENVOY_NAME)], "ports": _ports([envoy.port("mesh")])}]
        if workload.name == TOOL_GATEWAY:
            for example in (other for other in everything if other.component == "example-tool-server"):
                rules.append({"to": [_pods(example.name)], "ports": _ports([example.port("http")])})
        return rules
    if workload.component == "proxy":
        upstreams = (other for other in everything if other.component in ("service", "edge"))
        return [
            {
                "to": [_pods(upstream.name)],
                "ports": _ports(port.number for port in upstream.ports if port.name in ("grpc", "http")),
            }
            for upstream in upstreams
        ]
    # The example servers fetch the token service's keys from Envoy's front listener.
    return [{"to": [_pods(ENVOY_NAME)], "ports": _ports([envoy.port("front")])}]


def workload_policies(workload: Workload, everything: tuple[Workload, ...]) -> list[Manifest]:
    """The workload's own ingress and in-cluster egress."""
    return [
        _policy(
            f"{workload.name}-ingress",
            {"matchLabels": workload.selector},
            _ingress(workload, everything),
            None,
        ),
        _policy(
            f"{workload.name}-egress", {"matchLabels": workload.selector}, None, _egress(workload, everything)
        ),
    ]


def store_policy_name(store: str) -> str:
    return f"egress-store-{store}"


OUTSIDE_POLICY = "egress-outside-https"


def shared_egress() -> list[Manifest]:
    """Egress to each kind of store for the pods labelled as its users, and outside HTTPS for the
    pods labelled as calling outside. An overlay pins a store's address block by adding `to`."""
    policies = [
        _policy(
            store_policy_name(store),
            {"matchLabels": {LABEL_STORE.format(store): "true"}},
            None,
            [{"ports": _ports(ports)}],
        )
        for store, ports in STORE_PORTS.items()
    ]
    policies.append(
        _policy(
            OUTSIDE_POLICY,
            {"matchLabels": {LABEL_OUTSIDE: "true"}},
            None,
            [{"ports": _ports([OUTSIDE_HTTPS_PORT])}],
        )
    )
    return policies
