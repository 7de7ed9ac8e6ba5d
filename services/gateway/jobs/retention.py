"""Erases finished meditations once they are older than the configured retention, a batch at a time.

Every gateway replica sweeps on its own; nothing is coordinated, because every step is idempotent: deleting a
meditation's stored assets twice finds nothing the second time, and `JobStore.delete` tells who really removed
the record. The conversation a meditation was made from is never touched: it is its owner's, and goes only
with DeleteConversation.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from services.database import now
from services.gateway.deadlines import detached
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.jobs.store import JobStore

logger = logging.getLogger(__name__)

# Meditations one pass erases at most: a backlog (retention switched on, a long outage) drains batch by
# batch, each one a short query and one media call per meditation, never one long transaction.
DEFAULT_BATCH_SIZE = 100
# How often a replica sweeps when there is no backlog; retention is counted in days, so minutes of lag are
# nothing, and idle passes cost one indexed query.
DEFAULT_INTERVAL_SECONDS = 600.0
# Failures that mean a dependency (media, storage, the database) is down: the rest of the batch would only
# fail the same way, each after its deadline, so the pass stops and the next one retries.
_DEPENDENCY_DOWN = frozenset({FailureKind.UNAVAILABLE, FailureKind.DEADLINE})


class AssetEraser(Protocol):
    """What deletes a meditation's stored files (its narration, live preview and videos); the job dispatcher
    is the one in production."""

    async def delete_assets(self, name: str) -> None:
        """Deletes what the meditation stored; idempotent."""
        ...


@dataclass(frozen=True)
class SweepReport:
    """What one pass did."""

    # Meditations whose record this pass removed (another replica may have removed some it found).
    erased: int
    # Meditations it found due but could not erase; they are found again by the next pass.
    failed: int
    # A full batch went without failure: more may be due at once.
    has_more: bool


class MeditationRetention:
    """Erases finished meditations older than `retention`: their stored assets first, then their record and
    event log, so that a pass cut short leaves the record for the next pass to find."""

    def __init__(
        self,
        store: JobStore,
        assets: AssetEraser,
        retention: timedelta,
        *,
        clock: Callable[[], datetime] = now,
        batch_size: int = DEFAULT_BATCH_SIZE,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        if retention <= timedelta(0):
            # Zero would erase every finished meditation at once: "keep forever" is no retention object.
            raise ValueError(f"retention must be positive, not {retention}")
        self._store = store
        self._assets = assets
        self.retention = retention
        self._clock = clock
        self._batch_size = batch_size
        self._interval_seconds = interval_seconds
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> SweepReport:
        """Erases up to one batch of due meditations, oldest first. A failure is logged once for the pass
        (the meditation's name and why, never its text); what failed is retried by the next pass."""
        cutoff = self._clock() - self.retention
        try:
            due = await self._store.list_finished_before(cutoff, self._batch_size)
        except GatewayError as error:
            logger.warning("meditation retention: could not list due meditations (%s)", error.message)
            return SweepReport(erased=0, failed=0, has_more=False)
        erased = 0
        failures: list[tuple[str, GatewayError]] = []
        for name in due:
            try:
                # Assets before the record: if deleting them fails, the record is still there to find.
                await self._assets.delete_assets(name)
                if await self._store.delete(name):
                    erased += 1
            except GatewayError as error:
                failures.append((name, error))
                if error.kind in _DEPENDENCY_DOWN:
                    break
        if failures:
            first_name, first_error = failures[0]
            logger.warning(
                "meditation retention: %d due meditation(s) not erased this pass, first %s (%s); "
                "retrying next pass",
                len(failures),
                first_name,
                first_error.message,
            )
        if erased:
            logger.info("meditation retention: erased %d meditation(s) finished before %s", erased, cutoff)
        return SweepReport(
            erased=erased, failed=len(failures), has_more=len(due) == self._batch_size and not failures
        )

    def start(self) -> None:
        """Sweeps now and then every interval, at once again while a backlog lasts. Idempotent."""
        if self._task is None:
            # Detached: the sweep outlives whatever happened to start it, and takes no request's deadline.
            self._task = asyncio.create_task(
                self._sweep_periodically(), name="meditation retention", context=detached()
            )

    async def stop(self) -> None:
        """Stops sweeping (at shutdown). A pass cut short leaves nothing half done that the next one would
        not finish: each step is idempotent and the record goes last."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _sweep_periodically(self) -> None:
        while True:
            try:
                report = await self.sweep()
            except Exception:
                # A bug, not an outage (those are GatewayErrors, logged by the pass): loud, and the loop
                # lives on, because a dead sweep would silently keep everything forever.
                logger.exception("meditation retention: the pass failed unexpectedly; retrying next pass")
                report = None
            if report is not None and report.has_more:
                continue
            # Jittered, so replicas restarted together drift apart instead of sweeping in lockstep.
            await asyncio.sleep(self._interval_seconds * random.uniform(0.75, 1.25))  # the sweep's period
