"""The optional observability profile, checked without a Docker engine: compose's Prometheus and
Grafana, a scrape job for every process on the registry's metrics port, rules that are well formed
and link their runbooks, and a dashboard wired to the provisioned datasource.

Whether the metric names in the rules, the dashboard and docs/operations.md are really exported is
checked against real scrapes of the running mesh in tests/e2e/test_metrics.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from services.runtime.registry import EDGE, ENVOY, SERVICES
from tests.stack.observability import (
    DASHBOARD,
    GRAFANA,
    OPERATIONS,
    PROMETHEUS_CONFIG,
    REPO,
    RULES,
    balanced,
    dashboard,
    expressions,
    load_yaml,
    metric_names,
    recorded_names,
    rules,
)

PROFILE = "observability"
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Doc:
    document: Doc = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    return document


def _mounts(service: Doc) -> dict[str, str]:
    """Host path -> container path of a service's bind mounts."""
    return {
        source: target
        for source, target, *_ in (str(volume).split(":") for volume in service.get("volumes", []))
        if source.startswith("./")
    }


def test_the_profile_runs_official_prometheus_and_grafana_on_loopback(compose: Doc) -> None:
    services: dict[str, Doc] = compose["services"]
    in_profile = {name for name, service in services.items() if PROFILE in service.get("profiles", ())}
    assert in_profile == {"prometheus", "grafana"}
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name in in_profile:
        service = services[name]
        # Only this profile: a plain `docker compose up` starts neither.
        assert service["profiles"] == [PROFILE]
        for entry in service["ports"]:
            assert str(entry).startswith("127.0.0.1:"), f"{name} publishes {entry} beyond loopback"
        test = " ".join(service["healthcheck"]["test"])
        assert "/-/ready" in test or "/api/health" in test, f"{name}'s healthcheck checks no readiness"
        for source in _mounts(service):
            assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    for spec in SERVICES:
        assert PROFILE not in services[spec.name].get("profiles", ()), "the mesh itself is in no profile"


def test_prometheus_scrapes_every_process_on_its_registry_port(compose: Doc) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    targets: dict[str, list[str]] = {
        job["job_name"]: [target for group in job["static_configs"] for target in group["targets"]]
        for job in config["scrape_configs"]
    }
    expected = {spec.name: [f"{spec.name}:{spec.metrics_port}"] for spec in SERVICES}
    expected[EDGE.name] = [f"{EDGE.name}:{EDGE.metrics_port}"]
    expected["envoy"] = [f"envoy:{ENVOY.admin_port}"]
    assert targets == expected
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    assert all("metrics_path" not in jobs[name] for name in expected if name != "envoy")  # /metrics

    services: dict[str, Doc] = compose["services"]
    for job, hosts in targets.items():
        for target in hosts:
            host, port = target.split(":")
            assert host in services, f"{job} scrapes {host}, which is no compose service"
            if host != "envoy":
                assert port in {str(p) for p in services[host]["expose"]}, f"{host} does not expose {port}"
    # The rule file Prometheus loads is the one mounted where the config says.
    mounts = _mounts(services["prometheus"])
    assert mounts["./deploy/observability/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert config["rule_files"] == [mounts["./deploy/observability/prometheus/rules.yml"]]
    assert (REPO / "deploy/observability/prometheus/rules.yml").resolve() == RULES


def _anchors() -> set[str]:
    """The GitHub-style anchors of docs/operations.md's headings."""
    headings = re.findall(r"^#+ (.+)$", OPERATIONS.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_rules_are_well_formed_and_every_alert_links_its_runbook() -> None:
    all_rules = rules()
    records = [rule["record"] for rule in all_rules if "record" in rule]
    assert len(records) == len(set(records)), "a recording rule is defined twice"
    for name in records:
        # level:metric:operations, as Prometheus's naming practice has it.
        assert re.fullmatch(r"macp:[a-z0-9_]+:[a-z0-9_]+", name), name
    anchors = _anchors()
    alerts = [rule for rule in all_rules if "alert" in rule]
    assert len(alerts) >= 8
    for rule in all_rules:
        assert set(rule) <= {"record", "alert", "expr", "for", "labels", "annotations"}, rule
        assert ("record" in rule) != ("alert" in rule)
        assert balanced(str(rule["expr"])), rule.get("record") or rule.get("alert")
    for alert in alerts:
        name = alert["alert"]
        assert re.fullmatch(r"\d+[smh]", alert["for"]), name
        assert alert["labels"]["severity"] in {"page", "warning"}, name
        assert alert["annotations"]["summary"], name
        page, _, anchor = alert["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md", name
        assert anchor in anchors, f"{name}'s runbook #{anchor} is no heading of docs/operations.md"


def test_every_recording_rule_used_is_defined() -> None:
    defined = recorded_names()
    for where, exprs in expressions().items():
        assert exprs, f"{where} holds no PromQL"
        for expr in exprs:
            assert balanced(expr), f"{where}: unbalanced brackets in {expr!r}"
            for name in metric_names(expr):
                if ":" in name:
                    assert name in defined, f"{where} uses {name}, which rules.yml does not record"


def test_the_docs_state_each_slo_with_its_promql() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    for number, title in enumerate(
        (
            "edge availability",
            "edge REST read latency",
            "time to first token",
            "metering consumer lag",
            "quota decision latency",
        ),
        start=1,
    ):
        section = text.split(f"### SLO {number}: {title}", 1)
        assert len(section) == 2, f"docs/operations.md has no section for SLO {number} ({title})"
        body = section[1].split("\n### ", 1)[0]
        assert "```promql" in body, f"SLO {number} states no PromQL"
        assert "When it burns" in body, f"SLO {number} says nothing of what to do when it burns"
    assert "docker compose --profile observability up" in text


def test_the_dashboard_is_provisioned_and_queries_its_datasource(compose: Doc) -> None:
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    [source] = datasources
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "macp.yml")["providers"]
    mounts = _mounts(compose["services"]["grafana"])
    assert providers[0]["options"]["path"] == mounts["./deploy/observability/grafana/dashboards"]
    assert mounts["./deploy/observability/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert DASHBOARD.parent == REPO / "deploy/observability/grafana/dashboards"

    document = dashboard()
    panels = document["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    queries = [panel for panel in panels if panel["type"] != "row"]
    for panel in queries:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
    # The signals the issue names each have a panel.
    used = {name for panel in queries for t in panel["targets"] for name in metric_names(t["expr"])}
    for signal in (
        "macp_rpc_requests_total",
        "macp_rpc_duration_seconds_bucket",
        "macp_http_requests_total",
        "macp_http_request_duration_seconds_bucket",
        "macp:edge_http_errors:ratio_rate1h",
        "pending_agent_requests",
        "macp:metering_consumer_lag:sum",
        "macp_quota_refusals_total",
        "macp_breaker_state",
        "macp_rate_limit_decisions_total",
    ):
        assert signal in used, f"the dashboard shows no {signal}"
