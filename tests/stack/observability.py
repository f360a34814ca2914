"""The observability files, read the way Prometheus and Grafana read them, for the tests that check
them: the scrape config, the rules, the dashboard, and the PromQL of docs/operations.md.

No promtool here, so the PromQL is checked in Python: `metric_names(expr)` finds the series names an
expression selects (label matchers, strings, range windows and grouping clauses left out), which the
tests compare with what the running services really export.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
OBSERVABILITY = REPO / "deploy" / "observability"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus" / "prometheus.yml"
RULES = OBSERVABILITY / "prometheus" / "rules.yml"
GRAFANA = OBSERVABILITY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "macp.json"
OPERATIONS = REPO / "docs" / "operations.md"

# Series Prometheus makes itself for every target, which no service exports.
PROMETHEUS_SERIES = frozenset({"up"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_COMMENT = re.compile(r"#[^\n]*")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_WINDOW = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_PROMQL_BLOCK = re.compile(r"```promql\n(.*?)```", re.DOTALL)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def balanced(expr: str) -> bool:
    """Whether brackets pair up outside strings: the first thing a typo in PromQL breaks."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _COMMENT.sub("", _STRING.sub('""', expr)):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def metric_names(expr: str) -> set[str]:
    """The series names `expr` selects: identifiers that are not functions, keywords, label names
    of a grouping clause, comments, or Grafana variables (`$service`, `$__rate_interval`)."""
    text = _COMMENT.sub("", _STRING.sub('""', expr))
    text = _MATCHERS.sub("", text)
    text = _WINDOW.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        if match.start() > 0 and text[match.start() - 1] in "$.":
            continue
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function
        if name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(RULES)["groups"]
    return groups


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def operations_expressions() -> list[str]:
    """Every ```promql block of docs/operations.md (each may hold several expressions)."""
    return _PROMQL_BLOCK.findall(OPERATIONS.read_text(encoding="utf-8"))


def expressions() -> dict[str, list[str]]:
    """Where PromQL is written -> its expressions."""
    return {
        "docs/operations.md": operations_expressions(),
        "deploy/observability/prometheus/rules.yml": [str(rule["expr"]) for rule in rules()],
        "deploy/observability/grafana/dashboards/macp.json": dashboard_expressions(),
    }


def used_metric_names() -> dict[str, set[str]]:
    """Where PromQL is written -> the exported series names it uses (recording rules, whose
    names hold a colon, and Prometheus's own series left out)."""
    used: dict[str, set[str]] = {}
    for where, exprs in expressions().items():
        names = set().union(*(metric_names(expr) for expr in exprs)) if exprs else set()
        used[where] = {name for name in names if ":" not in name} - PROMETHEUS_SERIES
    return used


def catalogue() -> set[str]:
    """The metric names docs/operations.md's catalogue lists (first column of its tables)."""
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text.split("\n## Metric catalogue", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Za-z_:][A-Za-z0-9_:]*)` \|", section, re.MULTILINE))
