"""Autoscaling: an HPA on CPU for most workloads, a KEDA ScaledObject where a queue says more.

The agent proxy scales on `pending_agent_requests` (Generate calls waiting in its fair queue for a
provider slot: services/runtime/metrics.py) and metering on `macp_consumer_lag` (usage records
between the topic's end and its consumers' positions: services/runtime/consumer.py), each beside
CPU. KEDA makes and owns an HPA for each ScaledObject, so those two get no HPA of their own (two
HPAs on one Deployment fight): their CPU rule is a KEDA `cpu` trigger instead. The example MCP
servers run one replica and are not scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime.settings import Env, KafkaSettings
from services.stack.kubernetes_objects import metadata
from services.stack.kubernetes_sizing import CPU_TARGET_PERCENT
from services.stack.kubernetes_workloads import Manifest, Workload

MIN_REPLICAS = 2
MAX_REPLICAS = 10
# The namespace the base's Prometheus queries name: the production overlay's. The tenant overlay
# rewrites the queries with its own (kubernetes_overlays.py).
DEFAULT_NAMESPACE = "macp"
# prometheus-operator's Service for the Prometheus it runs in `monitoring` (docs/deploy.md).
PROMETHEUS_ADDRESS = "http://prometheus-operated.monitoring.svc:9090"
# More consumers than the usage topic has partitions would sit idle: metering scales up to that.
USAGE_PARTITIONS = KafkaSettings.from_env(Env({"MACP_KAFKA_BOOTSTRAP": "kafka:9092"})).topic_partitions


@dataclass(frozen=True)
class QueueTrigger:
    """A Prometheus query whose value, per replica, should stay at or under `per_replica`."""

    metric: str
    per_replica: int
    # A ceiling whatever the overlay allows: replicas past it would have nothing to do.
    cap: int | None = None

    def max_replicas(self, ceiling: int) -> int:
        return ceiling if self.cap is None else min(ceiling, self.cap)

    def query(self, service: str, namespace: str) -> str:
        return f'sum({self.metric}{{namespace="{namespace}",service="{service}"}})'


QUEUE_TRIGGERS: dict[str, QueueTrigger] = {
    # Ten waiting calls per replica: each replica has its own provider slots
    # (MACP_AGENT_PROXY_MAX_CONCURRENCY), so another replica takes waiting calls at once.
    "agent-proxy": QueueTrigger("pending_agent_requests", 10),
    # A thousand records behind per consumer is a few batches (MACP_METERING_BATCH_MAX_RECORDS).
    "metering": QueueTrigger("macp_consumer_lag", 1000, cap=USAGE_PARTITIONS),
}


def autoscaled(workload: Workload) -> bool:
    return workload.replicas is None


def horizontal_pod_autoscaler(workload: Workload) -> Manifest:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(workload.name, workload.labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload.name},
            "minReplicas": MIN_REPLICAS,
            "maxReplicas": MAX_REPLICAS,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": CPU_TARGET_PERCENT},
                    },
                }
            ],
        },
    }


def scaled_object(workload: Workload, trigger: QueueTrigger, namespace: str = DEFAULT_NAMESPACE) -> Manifest:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(workload.name, workload.labels),
        "spec": {
            "scaleTargetRef": {"name": workload.name},
            "minReplicaCount": MIN_REPLICAS,
            "maxReplicaCount": trigger.max_replicas(MAX_REPLICAS),
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": PROMETHEUS_ADDRESS,
                        "query": trigger.query(workload.name, namespace),
                        "threshold": str(trigger.per_replica),
                    },
                },
                {"type": "cpu", "metricType": "Utilization", "metadata": {"value": str(CPU_TARGET_PERCENT)}},
            ],
        },
    }


def autoscaler(workload: Workload) -> Manifest | None:
    """The workload's ScaledObject or HPA; None when it runs a fixed count."""
    if not autoscaled(workload):
        return None
    trigger = QUEUE_TRIGGERS.get(workload.name)
    return scaled_object(workload, trigger) if trigger else horizontal_pod_autoscaler(workload)
