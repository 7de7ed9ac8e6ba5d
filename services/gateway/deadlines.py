"""The client's deadline, carried to every internal call made on its behalf.

A request handler opens `client_deadline(remaining)`; every call to content or media made while it runs
takes `bounded(own_timeout)`: its own budget, or what is left of the client's if that is less. Work that
outlives the client (a job) runs in a `detached()` context, under its stage budgets alone.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

from services.gateway.errors import FailureKind, GatewayError

# The monotonic time by which the client wants its answer; None when it set no deadline.
_client_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "client_deadline", default=None
)


@contextmanager
def client_deadline(remaining_seconds: float | None) -> Iterator[None]:
    """Bounds every internal call made inside by the client's remaining time (None: no deadline)."""
    deadline = None if remaining_seconds is None else time.monotonic() + remaining_seconds
    token = _client_deadline.set(deadline)
    try:
        yield
    finally:
        _client_deadline.reset(token)


def bounded(timeout_seconds: float) -> float:
    """The timeout for an internal call: its own, or the client's remaining time if that is shorter.

    Raises DEADLINE when the client's deadline has already passed: no call is worth starting then.
    """
    deadline = _client_deadline.get()
    if deadline is None:
        return timeout_seconds
    remaining_seconds = deadline - time.monotonic()
    if remaining_seconds <= 0:
        raise GatewayError(FailureKind.DEADLINE, "the request's deadline passed before it could be answered")
    return min(timeout_seconds, remaining_seconds)


def detached() -> contextvars.Context:
    """A context without the client's deadline, for work that outlives the request that started it."""
    context = contextvars.copy_context()
    context.run(_client_deadline.set, None)
    return context
