"""The compose file checks: the shipped file passes, and each kind of broken cross-reference is reported."""

from pathlib import Path

import pytest

from scripts.check_compose import ComposeFileError, check_cross_references, find_cycle

REPOSITORY = Path(__file__).resolve().parent.parent


def test_shipped_compose_file_passes_strictly() -> None:
    findings, service_count, _ = check_cross_references(
        REPOSITORY / "docker-compose.yml", REPOSITORY / "README.md", is_strict=True
    )

    assert findings.errors == []
    assert findings.warnings == []
    assert service_count > 0


def test_broken_cross_references_are_each_reported(tmp_path: Path) -> None:
    compose_path = tmp_path / "compose.yml"
    compose_path.write_text(
        """
version: "3"
services:
  web:
    build: {context: ., dockerfile: Missing.Dockerfile}
    image: web
    environment:
      TOKEN: ${UNDOCUMENTED_TOKEN}
      KEY: <FAKE_KEY>
    volumes: [undeclared:/data]
    depends_on:
      ghost: {condition: service_started}
      worker: {condition: service_healthy}
  worker:
    image: worker
    depends_on: [web]
  edge:
    build: {context: ., args: {SERVICE: edge}}
    image: edge
""".replace("<FAKE_KEY>", "sk-" + "abcdefghijklmnopqrstuvwxyz"),  # built here: no key-like text in the repo
        encoding="utf-8",
    )

    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim AS gateway\nFROM ${SERVICE}\n")

    findings, _, _ = check_cross_references(compose_path, tmp_path / "README.md", is_strict=True)

    report = "\n".join(findings.errors)
    for expected in (
        "`version` is obsolete",
        "Missing.Dockerfile does not exist",
        "'ghost' is not a service",
        "worker has no health check",
        "depends_on has a cycle: web -> worker -> web",
        "named volume 'undeclared' is not declared",
        "${UNDOCUMENTED_TOKEN} has no default",
        "looks like an API key",
        "TOKEN (set for web) is not documented",
        "services.edge.build.args.SERVICE: Dockerfile has no stage named 'edge'",
    ):
        assert expected in report


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    compose_path = tmp_path / "compose.yml"
    compose_path.write_text("- a list\n", encoding="utf-8")

    with pytest.raises(ComposeFileError, match="not a mapping"):
        check_cross_references(compose_path, tmp_path / "README.md", is_strict=False)


def test_an_acyclic_graph_has_no_cycle() -> None:
    assert find_cycle({"gateway": ["content", "media"], "content": ["postgres"], "media": []}) is None
