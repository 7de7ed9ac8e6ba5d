"""What a log line is about, carried with the task that writes it (the meditation a job works on), and the
log formats a process may be configured with.

No grpc here: the job runner (domain code) binds the meditation, configs read the format, and serving's
handler writes both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# STILLPOINT_LOG_FORMAT: text for a person at a terminal (the default), json for a log collector.
LOG_FORMATS: tuple[str, ...] = ("text", "json")

# Tasks started inside `bound_meditation` (asyncio copies the context) log under the same meditation.
current_meditation: ContextVar[str | None] = ContextVar("current_meditation", default=None)


@contextmanager
def bound_meditation(name: str) -> Iterator[None]:
    """Every log record written inside (and in tasks started inside) names the meditation `name`."""
    token = current_meditation.set(name)
    try:
        yield
    finally:
        current_meditation.reset(token)
