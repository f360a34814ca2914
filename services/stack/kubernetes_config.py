"""The settings every MACP pod shares (a ConfigMap), its secrets (a Secret of placeholders) and
Envoy's bootstrap (a ConfigMap), for the Kubernetes manifests."""

from __future__ import annotations

from services.runtime.registry import ENVOY
from services.stack.kubernetes_workloads import (
    COMMON_CONFIG_MAP,
    ENVOY_CONFIG_MAP,
    ENVOY_NAME,
    PART_OF,
    PROVIDER_KEYS,
    SECRET_NAME,
    SERVICE_SECRETS,
    SHUTDOWN_GRACE_SECONDS,
    STORE_SECRETS,
    Manifest,
    envoy_config_text,
)

# What compose.yaml's x-macp-environment gives every process, less the stores' URLs (secret here).
COMMON_SETTINGS: dict[str, str] = {
    "MACP_BIND_HOST": "0.0.0.0",
    "MACP_LOG_LEVEL": "info",
    "MACP_DATA_DIR": "/var/lib/macp",
    # Every service-to-service call goes through Envoy's mesh listener.
    "MACP_MESH_ADDRESS": f"{ENVOY_NAME}:{ENVOY.mesh_port}",
    # The drain after SIGTERM; the pods' terminationGracePeriodSeconds is this plus a margin.
    "MACP_SHUTDOWN_GRACE_SECONDS": str(SHUTDOWN_GRACE_SECONDS),
    # The public origin clients reach Envoy's front listener at: every verifier compares a token's
    # `iss` with it byte for byte. An overlay sets the real one.
    "MACP_TOKEN_ISSUER": "https://macp.example.com",
    "MACP_S3_BUCKET": "macp-archives",
    "MACP_S3_REGION": "us-east-1",
}

# Placeholders: a real deployment keeps these in a secret manager (External Secrets Operator,
# Sealed Secrets, a cloud's secret store) and never commits them; the production overlay leaves
# this Secret out for that reason (docs/deploy.md).
PLACEHOLDER = "CHANGE-ME"
STORE_PLACEHOLDERS: dict[str, str] = {
    "MACP_DATABASE_URL": "postgresql://macp:CHANGE-ME@postgres.example.internal:5432/macp",
    "MACP_REDIS_URL": "rediss://:CHANGE-ME@redis.example.internal:6379/0",
    "MACP_KAFKA_BOOTSTRAP": "kafka.example.internal:9092",
    "MACP_S3_ENDPOINT": "https://s3.us-east-1.amazonaws.com",
}


def secret_keys() -> tuple[str, ...]:
    """Every key of the Secret: the stores', each service's own, and the providers'."""
    keys = [key for group in STORE_SECRETS.values() for key in group]
    keys += [key for group in SERVICE_SECRETS.values() for key in group]
    keys += PROVIDER_KEYS
    return tuple(dict.fromkeys(keys))


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/part-of": PART_OF}


def common_config_map() -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": COMMON_CONFIG_MAP, "labels": _labels()},
        "data": dict(COMMON_SETTINGS),
    }


def secret() -> Manifest:
    values = {key: STORE_PLACEHOLDERS.get(key, PLACEHOLDER) for key in secret_keys()}
    # Empty means unset: an invented provider key would be tried, and refused, at every turn.
    values.update(dict.fromkeys(PROVIDER_KEYS, ""))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_NAME, "labels": _labels()},
        "type": "Opaque",
        "stringData": values,
    }


def envoy_config_map() -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ENVOY_CONFIG_MAP, "labels": _labels()},
        "data": {"envoy.yaml": envoy_config_text()},
    }
