"""The observability check: the shipped alert rules and dashboard pass, and each kind of mistake is caught."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from scripts.check_observability import DASHBOARD, RULES, check, exported_metric_names, metric_names_in

REPOSITORY = Path(__file__).resolve().parent.parent
PROMTOOL = REPOSITORY / ".venv" / "bin" / "promtool"


@pytest.fixture(scope="module")
def promtool() -> Path:
    """promtool as `make lint` gets it (Debian's prometheus package, extracted into the venv)."""
    subprocess.run([str(REPOSITORY / "scripts" / "ensure-promtool.sh")], check=True, capture_output=True)
    return PROMTOOL


def test_the_shipped_rules_and_dashboard_pass(promtool: Path) -> None:
    assert check(RULES, DASHBOARD, promtool) == []


def test_label_names_are_not_mistaken_for_metrics() -> None:
    expression = 'sum by (grpc_method) (rate(grpc_server_call_duration_seconds_count{grpc_status="OK"}[5m]))'
    assert metric_names_in(expression) == {"grpc_server_call_duration_seconds_count"}
    assert {"stillpoint_jobs_finished_total", "stillpoint_time_to_first_playable_seconds_bucket"} <= (
        exported_metric_names()
    )


def test_a_renamed_metric_a_broken_expression_and_a_panel_without_a_query_are_each_reported(
    promtool: Path, tmp_path: Path
) -> None:
    rules = tmp_path / "alerts.yaml"
    rules.write_text(
        RULES.read_text().replace("stillpoint_jobs_dead_lettered_total", "stillpoint_jobs_deadlettered_total")
    )
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["panels"][0]["targets"][0]["expr"] = ""
    dashboard["panels"][1]["targets"][0]["expr"] = "rate(stillpoint_job_finished_total[5m])"
    dashboard_path = tmp_path / "dashboard.json"
    dashboard_path.write_text(json.dumps(dashboard))

    report = "\n".join(check(rules, dashboard_path, promtool))

    assert "StillpointDeadLetters: stillpoint_jobs_deadlettered_total is not a metric" in report
    assert "target A has no expression" in report
    assert "stillpoint_job_finished_total is not a metric" in report

    broken = tmp_path / "broken.yaml"
    broken.write_text(RULES.read_text().replace("> 0.1", "> > 0.1", 1))
    assert any(error.startswith("promtool check rules") for error in check(broken, DASHBOARD, promtool))
