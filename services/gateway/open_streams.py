"""How many meditation event streams each owner holds open on this gateway, and the limit on them.

A GenerateMeditation or WatchMeditation stream holds a server slot, a watcher of the job's log and, while
it waits, a poll of the database, for as long as the job runs: minutes. Without a limit one caller could
hold every slot of `maximum_concurrent_rpcs` and lock everyone else out. The count is kept per replica
(in memory, no round trip): behind a load balancer an owner may hold up to the limit on each replica,
which still bounds what they can hold to the limit times the replicas.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from services.gateway.errors import FailureKind, GatewayError

DEFAULT_MAX_STREAMS_PER_OWNER = 16


class OpenStreams:
    """Counts each owner's open streams on this replica and refuses one past `max_per_owner`.

    Owners are the authenticated callers (`caller()`), never a value the caller sends, so nobody can spend
    someone else's allowance. Counting needs no lock: it runs on the event loop, with no await between the
    check and the count.
    """

    def __init__(self, max_per_owner: int = DEFAULT_MAX_STREAMS_PER_OWNER) -> None:
        if max_per_owner < 1:
            raise ValueError("max_per_owner must be at least 1")
        self._max_per_owner = max_per_owner
        # Only owners with a stream open: an owner's entry goes when their last stream ends.
        self._open: dict[str, int] = {}

    @property
    def max_per_owner(self) -> int:
        """The most streams one owner may hold open here at once."""
        return self._max_per_owner

    def count(self, owner: str) -> int:
        """How many streams `owner` holds open here now."""
        return self._open.get(owner, 0)

    @contextmanager
    def hold(self, owner: str) -> Iterator[None]:
        """Counts one stream of `owner`'s for as long as the block runs, however it ends (completed, failed,
        cancelled by the client); raises GatewayError (EXHAUSTED) at once when they are at the limit."""
        open_now = self.count(owner)
        if open_now >= self._max_per_owner:
            raise GatewayError(
                FailureKind.EXHAUSTED,
                f"you have {open_now} meditation streams open on this server (the limit is "
                f"{self._max_per_owner}): close one you no longer read, or follow a meditation with "
                "GetMeditation instead of a stream",
            )
        self._open[owner] = open_now + 1
        try:
            yield
        finally:
            remaining = self._open[owner] - 1
            if remaining:
                self._open[owner] = remaining
            else:
                del self._open[owner]
