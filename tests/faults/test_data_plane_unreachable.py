"""PostgreSQL or Redis out of reach at start-up: the content service and the migration stop, saying where."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack import migrate

pytestmark = pytest.mark.e2e
PASSWORD = "s3cret-pass"
# Refused at once: nothing listens on port 1 (and 127.0.0.2 is not where anything of ours runs).
REFUSING_HOST = "127.0.0.2:1"
# Well past the 10 s database and 3 s Redis connect timeouts, far short of anything that looks like a hang.
EXIT_WITHIN_SECONDS = 30.0


@pytest.fixture(scope="module")
def silent_host() -> Iterator[str]:
    """A host:port that accepts connections and never says a word, like a stuck server or a black hole."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def _start(module: str, environment: dict[str, str]) -> subprocess.Popen[str]:
    """Starts `python -m module`, its output captured for the assertions."""
    return subprocess.Popen(
        [sys.executable, "-m", module],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    """What running_stack gives the services, with only the data services these tests name."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return {
        **inherited,
        "STILLPOINT_VAR_DIR": str(tmp_path / "var"),
        "STILLPOINT_CONTENT_PORT": "0",
        "STILLPOINT_GATEWAY_PORT": "0",
        **variables,
    }


def _assert_stops_promptly_naming(host: str, processes: dict[str, subprocess.Popen[str]]) -> None:
    """Every process exits non-zero within the bound, naming the host and never the password."""
    deadline = time.monotonic() + EXIT_WITHIN_SECONDS
    try:
        for module, process in processes.items():
            try:
                stdout, stderr = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{module} was still running after {EXIT_WITHIN_SECONDS:g} s")
            assert process.returncode != 0, f"{module} exited 0"
            assert host in stderr, f"{module} did not name {host}: {stderr[-1000:]}"
            assert PASSWORD not in stdout + stderr, f"{module} printed the password"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.mark.parametrize("reach", ["refused", "silent"])
def test_an_unreachable_database_stops_start_up_and_migration_naming_the_host_not_the_password(
    tmp_path: Path, silent_host: str, reach: str
) -> None:
    """Property: with PostgreSQL out of reach — the port refused, or a host that accepts and never
    answers — the migrations and start-up of both services that own tables (`services.content.migrate`,
    `services.content`, `services.gateway.migrate`, `services.gateway`) exit non-zero within 30 s with an
    error naming the database's host and port, never its password."""
    host = REFUSING_HOST if reach == "refused" else silent_host
    environment = _environment(tmp_path, DATABASE_URL=f"postgresql+asyncpg://postgres:{PASSWORD}@{host}/test")
    modules = ("services.content.migrate", "services.content", "services.gateway.migrate", "services.gateway")
    _assert_stops_promptly_naming(host, {m: _start(m, environment) for m in modules})


@pytest.mark.parametrize("reach", ["refused", "silent"])
def test_an_unreachable_redis_stops_start_up_naming_the_host_not_the_password(
    tmp_path: Path, silent_host: str, reach: str
) -> None:
    """Property: with Redis out of reach — the port refused, or a host that accepts and never answers —
    the content service (its cache) and the gateway (its job queue) exit non-zero within 30 s with an error
    naming Redis's host and port, never its password (the migrations, which need no Redis, still succeed)."""
    host = REFUSING_HOST if reach == "refused" else silent_host
    environment = _environment(tmp_path, REDIS_URL=f"redis://:{PASSWORD}@{host}/0")
    migrate(environment)
    services = ("services.content", "services.gateway")
    _assert_stops_promptly_naming(host, {module: _start(module, environment) for module in services})
