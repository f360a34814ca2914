"""`macp k8s-render [--check]`: write (or verify) the committed Kustomize tree in `deploy/kubernetes/`.

`base/` holds one file per workload (its ServiceAccount, Deployment, Service, PodDisruptionBudget,
autoscaler, ServiceMonitor and own NetworkPolicies), the policies every pod shares, the common
settings, the placeholder Secret and Envoy's bootstrap; `overlays/` holds `production` and
`enterprise-tenant`. Everything comes from services/runtime/registry.py, rendered with an empty
environment, so the committed bytes never depend on who ran the command.
"""

from __future__ import annotations

from pathlib import Path

from services.stack.kubernetes_autoscaling import autoscaler
from services.stack.kubernetes_config import common_config_map, envoy_config_map, secret
from services.stack.kubernetes_objects import (
    deployment,
    kubernetes_service,
    pod_disruption_budget,
    service_account,
    service_monitor,
)
from services.stack.kubernetes_overlays import KUSTOMIZATION, enterprise_tenant, production
from services.stack.kubernetes_policies import baseline, shared_egress, workload_policies
from services.stack.kubernetes_workloads import Manifest, Workload, workloads
from services.stack.kubernetes_yaml import HEADER, documents, dump
from services.stack.rendered_tree import RenderedTree

FIX_COMMAND = "macp k8s-render"
DEFAULT_DIR = Path("deploy/kubernetes")


def workload_documents(workload: Workload, everything: tuple[Workload, ...]) -> list[Manifest]:
    """Every object of one workload, in the order a reader looks for them."""
    objects = [
        service_account(workload),
        deployment(workload),
        kubernetes_service(workload),
        pod_disruption_budget(workload),
        autoscaler(workload),
        service_monitor(workload),
        *workload_policies(workload, everything),
    ]
    return [item for item in objects if item is not None]


def base_files() -> dict[str, str]:
    everything = workloads()
    files = {
        "settings.yaml": documents([common_config_map(), secret()]),
        "envoy-config.yaml": documents([envoy_config_map()]),
        "network-policies.yaml": documents([*baseline(), *shared_egress()]),
    }
    for workload in everything:
        files[f"{workload.name}.yaml"] = documents(workload_documents(workload, everything))
    kustomization = {**KUSTOMIZATION, "resources": sorted(files)}
    return {"kustomization.yaml": HEADER + dump(kustomization), **files}


def _with_header(files: dict[str, str]) -> dict[str, str]:
    return {name: HEADER + text for name, text in files.items()}


def rendered_files() -> dict[str, str]:
    """Path under deploy/kubernetes/ -> its exact expected contents."""
    trees = {
        "base": base_files(),
        "overlays/production": _with_header(production()),
        "overlays/enterprise-tenant": _with_header(enterprise_tenant()),
    }
    return {f"{folder}/{name}": text for folder, files in trees.items() for name, text in files.items()}


TREE = RenderedTree("the Kustomize tree", DEFAULT_DIR, rendered_files, FIX_COMMAND, prune=True)
stale_files = TREE.stale_files
configure = TREE.configure
run = TREE.run
