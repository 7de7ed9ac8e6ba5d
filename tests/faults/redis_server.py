"""A redis-server of a fault test's own, which it may kill and restart."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis


class RedisServer:
    """A redis-server of this test's own, without persistence: a restart comes back empty."""

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port = port
        self._log_dir = log_dir
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self._log_dir / "redis.log", "ab") as log:
            self._process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
                stdout=log,
                stderr=log,
            )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # polling for start-up, with a deadline
        client.close()

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
