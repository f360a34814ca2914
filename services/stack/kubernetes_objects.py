"""The Kubernetes objects of one workload: its Deployment, ServiceAccount, Service,
PodDisruptionBudget and ServiceMonitor (kubernetes_workloads.py says what each workload is)."""

from __future__ import annotations

from services.stack.kubernetes_workloads import COMMON_CONFIG_MAP, SECRET_NAME, Manifest, Workload


def metadata(name: str, labels: dict[str, str]) -> Manifest:
    return {"name": name, "labels": labels}


def _environment(workload: Workload) -> list[Manifest]:
    variables: list[Manifest] = [
        {"name": name, "value": value} for name, value in workload.environment.items()
    ]
    for key in workload.secret_keys:
        variables.append({"name": key, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key}}})
    for key in workload.optional_secret_keys:
        reference = {"name": SECRET_NAME, "key": key, "optional": True}
        variables.append({"name": key, "valueFrom": {"secretKeyRef": reference}})
    return variables


def _container(workload: Workload) -> Manifest:
    container: Manifest = {
        "name": workload.name,
        "image": workload.image,
        "command": list(workload.command),
        "ports": [
            {"name": port.name, "containerPort": port.number, "protocol": "TCP"} for port in workload.ports
        ],
    }
    if workload.uses_common_config:
        container["envFrom"] = [{"configMapRef": {"name": COMMON_CONFIG_MAP}}]
    environment = _environment(workload)
    if environment:
        container["env"] = environment
    container.update(workload.probes)
    container["resources"] = workload.sizing.resources()
    if workload.prestop_sleep_seconds:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": workload.prestop_sleep_seconds}}}
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": workload.run_as,
    }
    if workload.volume_mounts:
        container["volumeMounts"] = list(workload.volume_mounts)
    return container


def deployment(workload: Workload) -> Manifest:
    pod_metadata: Manifest = {"labels": workload.pod_labels}
    if workload.pod_annotations:
        pod_metadata["annotations"] = workload.pod_annotations
    pod: Manifest = {
        "serviceAccountName": workload.name,
        # No process calls the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": workload.termination_grace_seconds,
        # Replicas on different nodes where there are any, so a node's loss is one replica's.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": workload.selector},
            }
        ],
        "containers": [_container(workload)],
    }
    if workload.volumes:
        pod["volumes"] = list(workload.volumes)
    spec: Manifest = {}
    if workload.replicas is not None:
        spec["replicas"] = workload.replicas
    spec.update(
        {
            "selector": {"matchLabels": workload.selector},
            # A new pod is ready before an old one goes: capacity never dips during a rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": pod_metadata, "spec": pod},
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(workload.name, workload.labels),
        "spec": spec,
    }


def service_account(workload: Workload) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(workload.name, workload.labels),
        "automountServiceAccountToken": False,
    }


def kubernetes_service(workload: Workload) -> Manifest:
    """The Service named as the registry names the workload. For MACP processes it is headless:
    its DNS name answers every ready pod's address, which Envoy's STRICT_DNS clusters balance over
    (a ClusterIP would hide the pods behind one address and one long-lived HTTP/2 connection)."""
    spec: Manifest = {"selector": workload.selector}
    if workload.component in ("service", "edge"):
        spec["clusterIP"] = "None"
    spec["ports"] = [
        {"name": port.name, "port": port.number, "targetPort": port.name, "protocol": "TCP"}
        for port in workload.ports
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(workload.name, workload.labels),
        "spec": spec,
    }


def pod_disruption_budget(workload: Workload) -> Manifest:
    """One replica at a time may be evicted (a node drain, an upgrade)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(workload.name, workload.labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": workload.selector}},
    }


def service_monitor(workload: Workload) -> Manifest | None:
    """prometheus-operator's scrape of the workload's metrics port; None without one."""
    if workload.metrics_port is None:
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(workload.name, workload.labels),
        "spec": {
            "selector": {"matchLabels": workload.selector},
            "endpoints": [
                {
                    "port": workload.metrics_port,
                    "path": workload.metrics_path,
                    "interval": "15s",
                    # The metrics carry their own `service` label (the process's name), which the
                    # operator's target label of the same name would otherwise rename.
                    "honorLabels": True,
                }
            ],
        },
    }
