"""The authentication bench measures every case it names; what the numbers are is not a test's business."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.authentication import main
from tests.data_plane import POSTGRES_ADMIN_DSN, unavailable

ROOT = Path(__file__).resolve().parent.parent
SQLITE_CASES = {
    "api_key_cached",
    "api_key_expired_sqlite",
    "supabase_hs256",
    "supabase_es256",
    "supabase_rs256",
    "refused_bad_signature",
}


def _assert_measured(statistics: dict[str, Any], calls: int, case: str) -> None:
    assert statistics["count"] == calls, case
    for name in ("p50", "p95", "mean", "min", "max"):
        assert statistics[name] > 0, (case, name)


def test_the_command_reports_every_case_and_the_grpc_comparison(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.authentication",
            "--calls",
            "20",
            "--no-postgres",
            "--output-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "authentication.json").read_text())
    cases = {case["case"]: case for case in report["owner_of"]}
    assert set(cases) == SQLITE_CASES
    for name, case in cases.items():
        _assert_measured(case, 20, name)
    # The JWKS was fetched once, in the untimed warm-up: every timed token call found its key cached.
    assert report["jwks_fetches"] == 1
    comparison = report["grpc"]
    _assert_measured(comparison["api_key"], 20, "grpc api_key")
    _assert_measured(comparison["authentication_disabled"], 20, "grpc disabled")
    _assert_measured(comparison["owner_of_in_server"], 20, "owner_of in the server")
    # The difference of two noisy measurements may be either sign; it is reported, never judged.
    assert set(comparison["added_latency_per_call"]) == {"p50", "p95", "mean"}
    assert report["skipped"] == ["PostgreSQL: not measured (--no-postgres)"]
    markdown = (tmp_path / "authentication.md").read_text()
    assert "added latency per call" in markdown
    assert markdown in result.stdout
    for case in cases.values():
        assert case["title"] in markdown


def test_the_postgresql_lookup_is_measured_on_a_fresh_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["--calls", "5", "--postgres-calls", "5", "--output-dir", str(tmp_path)]
    assert main([*arguments, "--postgres-admin-dsn", POSTGRES_ADMIN_DSN]) == 0
    report = json.loads((tmp_path / "authentication.json").read_text())
    cases = {case["case"]: case for case in report["owner_of"]}
    if "api_key_expired_postgresql" not in cases:
        unavailable("PostgreSQL", RuntimeError("; ".join(report["skipped"])))
    assert set(cases) == {*SQLITE_CASES, "api_key_expired_postgresql"}
    _assert_measured(cases["api_key_expired_postgresql"], 5, "postgresql")
    assert report["skipped"] == []
    assert "PostgreSQL lookup" in capsys.readouterr().out
