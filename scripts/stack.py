"""Runs the three services as local processes, for `make demo` and the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICES = ("content", "media", "gateway")


@dataclass
class Stack:
    """Addresses and processes of a running stack."""

    gateway_address: str
    content_address: str
    media_address: str
    var_root: Path
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)

    def stop(self, name: str, signum: int = signal.SIGTERM) -> int:
        """Stops one service (SIGTERM: gracefully; SIGKILL: a crash) and returns its exit status."""
        process = self.processes[name]
        process.send_signal(signum)
        return process.wait(timeout=30)

    def start(self, name: str, startup_timeout_seconds: float = 60.0) -> None:
        """Starts one service again with the stack's environment and waits until it is SERVING."""
        self.processes[name] = _spawn(name, self.environment, self.log_dir)
        address = {
            "content": self.content_address,
            "media": self.media_address,
            "gateway": self.gateway_address,
        }
        wait_until_serving(address[name], startup_timeout_seconds)


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_serving(address: str, timeout_seconds: float) -> None:
    """Polls grpc.health.v1 until the server reports SERVING."""
    deadline = time.monotonic() + timeout_seconds
    last_error = "no answer"
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.RpcError as error:
                last_error = error.code().name
            time.sleep(0.1)
    raise TimeoutError(f"{address} did not report SERVING within {timeout_seconds:g} s ({last_error})")


@contextmanager
def running_stack(
    var_root: Path,
    *,
    ports: Mapping[str, int] | None = None,
    extra_environment: Mapping[str, str] | None = None,
    startup_timeout_seconds: float = 60.0,
) -> Iterator[Stack]:
    """Starts content, media and gateway, waits for health, yields their addresses, then SIGTERMs them."""
    chosen = dict(ports or {name: free_port() for name in SERVICES})
    log_dir = var_root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "STILLPOINT_VAR_DIR": str(var_root),
        "STILLPOINT_CONTENT_PORT": str(chosen["content"]),
        "STILLPOINT_MEDIA_PORT": str(chosen["media"]),
        "STILLPOINT_GATEWAY_PORT": str(chosen["gateway"]),
        "STILLPOINT_CONTENT_ADDRESS": f"127.0.0.1:{chosen['content']}",
        "STILLPOINT_MEDIA_ADDRESS": f"127.0.0.1:{chosen['media']}",
        **(extra_environment or {}),
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    stack = Stack(
        gateway_address=f"127.0.0.1:{chosen['gateway']}",
        content_address=f"127.0.0.1:{chosen['content']}",
        media_address=f"127.0.0.1:{chosen['media']}",
        var_root=var_root,
        log_dir=log_dir,
        processes=processes,
        environment=environment,
    )
    # The content service refuses an unmigrated database, as in production: migrate first.
    migrated = subprocess.run(
        [sys.executable, "-m", "services.content.migrate"], env=environment, capture_output=True, text=True
    )
    if migrated.returncode != 0:
        raise RuntimeError(f"migration failed: {migrated.stderr.strip() or migrated.stdout.strip()}")
    try:
        for name in SERVICES:
            processes[name] = _spawn(name, environment, log_dir)
        for name in SERVICES:
            try:
                wait_until_serving(f"127.0.0.1:{chosen[name]}", startup_timeout_seconds)
            except TimeoutError as error:
                code = processes[name].poll()
                status = "is still starting" if code is None else f"exited with {code}"
                log_tail = (log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} {status}: {error}\n--- {name}.log ---\n{log_tail}") from None
        yield stack
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _spawn(name: str, environment: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    with open(log_dir / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], env=environment, stdout=log, stderr=log
        )
