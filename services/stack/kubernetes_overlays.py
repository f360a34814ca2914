"""The Kustomize overlays over the base: `production` and `enterprise-tenant`.

production: the `macp` namespace, the image from a registry, more replicas, a public Service for
Envoy's front listener, and no placeholder Secret (the real one comes from a secret manager).

enterprise-tenant: production again, in a namespace of its own for one tenant (004 premise 5):
its own Secret there (its own stores and keys), its own bucket, topic, consumer group and Redis key
prefix even where a store is shared, store egress pinned to its stores' address block, and the
autoscalers' queries reading its own namespace. No MACP setting pins a process to one tenant: the
isolation is the namespace, its stores and its keys (docs/deploy.md).
"""

from __future__ import annotations

from services.runtime.registry import ENVOY
from services.stack.kubernetes_autoscaling import QUEUE_TRIGGERS
from services.stack.kubernetes_policies import STORE_PORTS, store_policy_name
from services.stack.kubernetes_workloads import (
    COMMON_CONFIG_MAP,
    ENVOY_NAME,
    LABEL_NAME,
    LABEL_PART_OF,
    MACP_IMAGE,
    PART_OF,
    SECRET_NAME,
    Manifest,
)
from services.stack.kubernetes_yaml import dump

KUSTOMIZATION: Manifest = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}

PRODUCTION_NAMESPACE = "macp"
PRODUCTION_IMAGE = "registry.example.com/macp"
PRODUCTION_TAG = "1.0.0"
PRODUCTION_MIN_REPLICAS = 3
PRODUCTION_MAX_REPLICAS = 20

TENANT = "acme"
TENANT_NAMESPACE = f"macp-tenant-{TENANT}"
TENANT_LABEL = "macp.dev/tenant"
# A placeholder: the address block of the tenant's own Postgres, Redis, Kafka and S3 endpoints.
TENANT_STORES_CIDR = "10.64.0.0/24"
# Names of the tenant's data in its stores: apart from any other deployment's, should one be shared.
TENANT_SETTINGS: dict[str, str] = {
    "MACP_TOKEN_ISSUER": f"https://{TENANT}.macp.example.com",
    "MACP_S3_BUCKET": f"macp-{TENANT}-archives",
    "MACP_KAFKA_USAGE_TOPIC": f"macp.{TENANT}.usage.v1",
    "MACP_METERING_CONSUMER_GROUP": f"macp-{TENANT}-metering",
    "MACP_REDIS_KEY_PREFIX": f"macp:{TENANT}:",
}


def namespace(name: str) -> Manifest:
    """A namespace whose pods must meet the `restricted` Pod Security Standard, as every MACP
    pod does (non-root, no privilege escalation, no capabilities, the runtime's seccomp profile)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {LABEL_PART_OF: PART_OF, "pod-security.kubernetes.io/enforce": "restricted"},
        },
    }


def envoy_public_service() -> Manifest:
    """Envoy's front listener for clients outside the cluster, through a cloud load balancer
    (terminate TLS there, or put an Ingress in its place). The base's `envoy` Service stays
    cluster-internal."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{ENVOY_NAME}-public", "labels": {LABEL_PART_OF: PART_OF}},
        "spec": {
            "type": "LoadBalancer",
            "selector": {LABEL_NAME: ENVOY_NAME},
            "ports": [{"name": "front", "port": 443, "targetPort": ENVOY.front_port, "protocol": "TCP"}],
        },
    }


def _json_patch(kind: str, operations: list[Manifest], name: str | None = None) -> Manifest:
    target: Manifest = {"kind": kind}
    if name is not None:
        target["name"] = name
    return {"target": target, "patch": dump(operations)}


def _replace(path: str, value: object) -> Manifest:
    return {"op": "replace", "path": path, "value": value}


def production() -> dict[str, str]:
    """The production overlay's files."""
    placeholder_secret = {
        "$patch": "delete",
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_NAME},
    }
    patches: list[Manifest] = [
        # The base's placeholder Secret is not applied: `kubectl apply -k` must never overwrite
        # the real one (docs/deploy.md creates it).
        {"patch": dump(placeholder_secret)},
        _json_patch(
            "HorizontalPodAutoscaler",
            [
                _replace("/spec/minReplicas", PRODUCTION_MIN_REPLICAS),
                _replace("/spec/maxReplicas", PRODUCTION_MAX_REPLICAS),
            ],
        ),
    ]
    for name, trigger in QUEUE_TRIGGERS.items():
        operations = [
            _replace("/spec/minReplicaCount", PRODUCTION_MIN_REPLICAS),
            _replace("/spec/maxReplicaCount", trigger.max_replicas(PRODUCTION_MAX_REPLICAS)),
        ]
        patches.append(_json_patch("ScaledObject", operations, name))
    kustomization = {
        **KUSTOMIZATION,
        "namespace": PRODUCTION_NAMESPACE,
        "resources": ["../../base", "namespace.yaml", "envoy-public.yaml"],
        "images": [{"name": MACP_IMAGE.split(":")[0], "newName": PRODUCTION_IMAGE, "newTag": PRODUCTION_TAG}],
        "patches": patches,
    }
    return {
        "kustomization.yaml": dump(kustomization),
        "namespace.yaml": dump(namespace(PRODUCTION_NAMESPACE)),
        "envoy-public.yaml": dump(envoy_public_service()),
    }


def enterprise_tenant() -> dict[str, str]:
    """The enterprise-tenant overlay's files."""
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": COMMON_CONFIG_MAP},
        "data": TENANT_SETTINGS,
    }
    patches: list[Manifest] = [{"patch": dump(config)}]
    for name, trigger in QUEUE_TRIGGERS.items():
        query = _replace("/spec/triggers/0/metadata/query", trigger.query(name, TENANT_NAMESPACE))
        patches.append(_json_patch("ScaledObject", [query], name))
    for store in STORE_PORTS:
        pinned = {
            "op": "add",
            "path": "/spec/egress/0/to",
            "value": [{"ipBlock": {"cidr": TENANT_STORES_CIDR}}],
        }
        patches.append(_json_patch("NetworkPolicy", [pinned], store_policy_name(store)))
    kustomization = {
        **KUSTOMIZATION,
        "namespace": TENANT_NAMESPACE,
        "resources": ["../production"],
        # On every object and its pods, so the tenant's metrics and logs carry it too.
        "labels": [{"pairs": {TENANT_LABEL: TENANT}, "includeTemplates": True}],
        "patches": patches,
    }
    return {"kustomization.yaml": dump(kustomization)}
