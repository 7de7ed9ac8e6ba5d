"""A Python process with children of its own, for the tests of what the bench counts as a service's."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def parent_of(script: str) -> Iterator[tuple[int, list[int]]]:
    """Runs `script`, which starts children and prints their pids on one line; yields its pid and theirs,
    and kills them all afterwards (children first, so none outlives the test)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", script + "\nimport sys\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    children: list[int] = []
    try:
        assert parent.stdout is not None
        children = [int(pid) for pid in parent.stdout.readline().split()]
        yield parent.pid, children
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()
