"""Validates deploy/observability/ offline: the Prometheus alert rules and the Grafana dashboard.

1. `promtool check rules` on the alert rules (Prometheus's own parser: PromQL syntax, templates, durations).
2. The dashboard is a Grafana dashboard: a title and uid, panels with unique ids, each with at least one
   target whose PromQL expression is non-empty and whose refId is unique within the panel.
3. Cross-references promtool cannot see: every metric an alert or a panel names is one the services export
   (the domain metrics registered by services/metrics.py, and gRPC's own per-method metrics), so a renamed
   metric cannot leave an alert that never fires.

Exits non-zero on any failure. Run as `python -m scripts.check_observability` (scripts/check-observability.sh
does, with promtool from scripts/ensure-promtool.sh).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from ruamel.yaml import YAML

import services.metrics  # noqa: F401  (registers the domain metrics this check reads from the registry)

REPOSITORY = Path(__file__).resolve().parent.parent
RULES = REPOSITORY / "deploy" / "observability" / "alerts.yaml"
DASHBOARD = REPOSITORY / "deploy" / "observability" / "grafana-dashboard.json"
# The metric families grpcio-observability exports (gRPC's A66 instruments, through OpenTelemetry's
# Prometheus exporter); tests/test_end_to_end.py scrapes them from the real services.
GRPC_FAMILIES = {
    "grpc_server_call_started": "counter",
    "grpc_server_call_duration_seconds": "histogram",
    "grpc_server_call_sent_total_compressed_message_size_bytes": "histogram",
    "grpc_server_call_rcvd_total_compressed_message_size_bytes": "histogram",
    "grpc_client_attempt_started": "counter",
    "grpc_client_attempt_duration_seconds": "histogram",
    "grpc_client_attempt_sent_total_compressed_message_size_bytes": "histogram",
    "grpc_client_attempt_rcvd_total_compressed_message_size_bytes": "histogram",
    "grpc_client_call_duration_seconds": "histogram",
}
# Our metric names and gRPC's, as they appear in PromQL: anything else with these prefixes is a typo.
METRIC_NAME = re.compile(r"\b((?:stillpoint|grpc)_[a-z0-9_]+)\b")
_LABEL_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
    "summary": ("", "_count", "_sum", "_created"),
}


def exported_metric_names() -> set[str]:
    """Every series name the services can export: each family's name with its type's suffixes."""
    families = {
        family.name: family.type for family in REGISTRY.collect() if family.name.startswith("stillpoint_")
    }
    families.update(GRPC_FAMILIES)
    return {name + suffix for name, kind in families.items() for suffix in _SUFFIXES[kind]}


def metric_names_in(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (ours and gRPC's), leaving out label names: those in
    matchers (`{grpc_status="OK"}`) and in grouping clauses (`by (grpc_method)`)."""
    without_matchers = _LABEL_MATCHERS.sub("", expression)
    without_grouping = _GROUPING.sub("", without_matchers)
    return set(METRIC_NAME.findall(without_grouping))


def rule_expressions(rules_path: Path) -> list[tuple[str, str]]:
    """(alert name, expression) of every rule in a Prometheus rule file."""
    document = YAML(typ="safe").load(rules_path.read_text(encoding="utf-8")) or {}
    return [
        (str(rule.get("alert") or rule.get("record")), str(rule.get("expr", "")))
        for group in document.get("groups") or []
        for rule in group.get("rules") or []
    ]


def check_dashboard(dashboard: Any) -> tuple[list[str], list[tuple[str, str]]]:
    """Structural errors of a Grafana dashboard, and (panel title, expression) of every target."""
    errors: list[str] = []
    expressions: list[tuple[str, str]] = []
    if not isinstance(dashboard, dict):
        return ["the dashboard is not a JSON object"], []
    for key in ("title", "uid", "panels"):
        if not dashboard.get(key):
            errors.append(f"the dashboard has no {key}")
    seen_ids: set[int] = set()
    for panel in dashboard.get("panels") or []:
        title = panel.get("title") or f"panel {panel.get('id')}"
        if panel.get("id") in seen_ids:
            errors.append(f"{title}: panel id {panel.get('id')} is used twice")
        seen_ids.add(panel.get("id"))
        targets = panel.get("targets") or []
        if not targets:
            errors.append(f"{title}: no targets")
        reference_ids = [target.get("refId") for target in targets]
        if len(set(reference_ids)) != len(reference_ids):
            errors.append(f"{title}: refIds repeat")
        for target in targets:
            expression = str(target.get("expr") or "").strip()
            if not expression:
                errors.append(f"{title}: target {target.get('refId')} has no expression")
            expressions.append((title, expression))
    return errors, expressions


def unknown_metrics(named: Iterable[tuple[str, str]], exported: set[str]) -> list[str]:
    """One error per metric a rule or panel names that no service exports."""
    return [
        f"{where}: {name} is not a metric the services export"
        for where, expression in named
        for name in sorted(metric_names_in(expression) - exported)
    ]


def check(rules_path: Path, dashboard_path: Path, promtool: Path) -> list[str]:
    """Every error in the rule file and the dashboard (empty when both are sound)."""
    errors: list[str] = []
    checked = subprocess.run(
        [str(promtool), "check", "rules", str(rules_path)], capture_output=True, text=True, check=False
    )
    if checked.returncode != 0:
        errors.append(f"promtool check rules: {(checked.stdout + checked.stderr).strip()}")
    try:
        dashboard = json.loads(dashboard_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        return [*errors, f"{dashboard_path.name} is not JSON: {error}"]
    dashboard_errors, panel_expressions = check_dashboard(dashboard)
    errors += dashboard_errors
    exported = exported_metric_names()
    errors += unknown_metrics(rule_expressions(rules_path), exported)
    errors += unknown_metrics(panel_expressions, exported)
    return errors


def main(arguments: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check-observability", description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=Path, default=RULES)
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--promtool", type=Path, default=Path(sys.prefix) / "bin" / "promtool")
    options = parser.parse_args(arguments)
    errors = check(options.rules, options.dashboard, options.promtool)
    for error in errors:
        print(f"check-observability: {error}", file=sys.stderr)
    if errors:
        return 1
    print(f"check-observability: ok -- {options.rules.name}, {options.dashboard.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
