"""`macp k8s-render [--check]`: write (or verify) the committed Kustomize tree in `deploy/kubernetes/`.

`base/` holds one file per workload (its ServiceAccount, Deployment, Service, PodDisruptionBudget,
autoscaler, ServiceMonitor and own NetworkPolicies), the policies every pod shares, the common
settings, the placeholder Secret and Envoy's bootstrap; `overlays/` holds `production` and
`enterprise-tenant`. Everything comes from services/runtime/registry.py, rendered with an empty
environment, so the committed bytes never depend on who ran the command.
"""

from __future__ import annotations

import argparse
import sys
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


def stale_files(directory: Path) -> list[Path]:
    """Files missing, differing from a fresh render, or left over from an older one."""
    expected = rendered_files()
    stale = [
        directory / name
        for name, text in expected.items()
        if not (directory / name).is_file() or (directory / name).read_text(encoding="utf-8") != text
    ]
    if directory.is_dir():
        present = {path.relative_to(directory).as_posix() for path in directory.rglob("*.yaml")}
        stale += [directory / name for name in sorted(present - set(expected))]
    return stale


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a file in deploy/kubernetes/ differs from the registry",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help="directory of the Kustomize tree (default: deploy/kubernetes/ under the current directory)",
    )


def run(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if not directory.is_dir() and not (directory.parent.parent / "pyproject.toml").is_file():
        # Refuse to scatter files: run from the repository root, or name the directory.
        print(f"{directory}/ is not there; run this from the repository root or pass --dir", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_files(directory)
        for path in stale:
            print(
                f"{path} is stale (it does not match services/runtime/registry.py); run `{FIX_COMMAND}`",
                file=sys.stderr,
            )
        return 1 if stale else 0
    expected = rendered_files()
    for name, text in expected.items():
        path = directory / name
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    for path in stale_files(directory):
        # Left over from a render of a workload the registry no longer names.
        path.unlink()
        print(f"removed {path}")
    return 0
