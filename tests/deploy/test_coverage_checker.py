"""The coverage checker of the manifest tests fails on a tree that misses what it checks: a
registry service without a workload, a probe, a budget, a policy, an autoscaler too many."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import TREE, Manifest, coverage_problems, kustomize, rendered, required_workloads


def test_a_tree_without_a_registry_service_fails_the_check(tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(TREE / "base", base)
    (base / "orchestrator.yaml").unlink()
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    kustomization["resources"].remove("orchestrator.yaml")
    (base / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    problems = coverage_problems(kustomize(base), required_workloads())
    assert problems == ["orchestrator has no Deployment"]


def _documents() -> list[Manifest]:
    return copy.deepcopy(list(rendered("base")))


def _container(documents: list[Manifest], name: str) -> Manifest:
    [deployment] = [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    container: Manifest = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def _without(kind: str, name: str) -> Callable[[list[Manifest]], list[Manifest]]:
    def edit(documents: list[Manifest]) -> list[Manifest]:
        return [d for d in documents if not (d["kind"] == kind and d["metadata"]["name"] == name)]

    return edit


def _no_readiness(documents: list[Manifest]) -> list[Manifest]:
    del _container(documents, "edge")["readinessProbe"]
    return documents


def _no_memory_limit(documents: list[Manifest]) -> list[Manifest]:
    del _container(documents, "example-weather")["resources"]["limits"]["memory"]
    return documents


def _liveness_on_readiness(documents: list[Manifest]) -> list[Manifest]:
    # Restarting on the overall status would restart every pod during a store's outage.
    _container(documents, "conversation")["livenessProbe"]["grpc"]["service"] = ""
    return documents


def _second_autoscaler(documents: list[Manifest]) -> list[Manifest]:
    [hpa] = [
        d for d in documents if d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"] == "token"
    ]
    extra = copy.deepcopy(hpa)
    extra["metadata"]["name"] = "agent-proxy"
    extra["spec"]["scaleTargetRef"]["name"] = "agent-proxy"
    return [*documents, extra]


def _no_default_deny(documents: list[Manifest]) -> list[Manifest]:
    return _without("NetworkPolicy", "default-deny")(documents)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (_without("PodDisruptionBudget", "token"), "token: no PodDisruptionBudget selects its pods"),
        (_without("NetworkPolicy", "envoy-ingress"), "envoy: no NetworkPolicy allows its ingress"),
        (
            _without("NetworkPolicy", "example-weather-egress"),
            "example-weather: no NetworkPolicy allows its egress",
        ),
        (
            _without("HorizontalPodAutoscaler", "edge"),
            "edge: has 0 HPA(s) and 0 ScaledObject(s); it needs exactly one",
        ),
        (_second_autoscaler, "agent-proxy: has 1 HPA(s) and 1 ScaledObject(s); it needs exactly one"),
        (_no_readiness, "edge: container edge has no readinessProbe"),
        (_no_memory_limit, "example-weather: container example-weather has no memory limit"),
        (_liveness_on_readiness, "conversation: livenessProbe is not a grpc probe of service 'liveness'"),
        (_no_default_deny, "no default-deny NetworkPolicy (every pod, both directions, no rule)"),
    ],
)
def test_each_gap_is_named(edit: Callable[[list[Manifest]], list[Manifest]], problem: str) -> None:
    assert coverage_problems(_documents(), required_workloads()) == []
    assert coverage_problems(edit(_documents()), required_workloads()) == [problem]
