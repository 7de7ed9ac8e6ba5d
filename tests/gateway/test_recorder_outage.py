"""The recorder rides out an unreachable job database: it writes each event again, within a bound."""

from __future__ import annotations

from datetime import datetime

import pytest

from services.gateway.errors import FailureKind, GatewayError
from services.gateway.events import Stage, StageChanged, StageState
from services.gateway.jobs.recorder import JobRecorder
from services.gateway.jobs.retry_policy import EventWritePolicy
from services.gateway.jobs.store import JobStore
from services.gateway.models import ImageAspect, JobChanges, MeditationOptions

QUICK = EventWritePolicy(max_wait_seconds=2.0, first_delay_seconds=0.01, max_delay_seconds=0.05)


class _OutageStore(JobStore):
    """The real store, behind a database that is gone for the next `outage_writes` writes; the first of
    them commits before its answer is lost, as when a connection is severed mid-commit."""

    def __init__(self, store: JobStore, outage_writes: int) -> None:
        self.__dict__.update(store.__dict__)
        self.outage_writes = outage_writes
        self.tries = 0

    async def record_event(self, name: str, sequence: int, payload: bytes, changes: JobChanges) -> datetime:
        self.tries += 1
        if self.outage_writes > 0:
            self.outage_writes -= 1
            if self.tries == 1:
                await super().record_event(name, sequence, payload, changes)
            raise GatewayError(FailureKind.UNAVAILABLE, "the job database is unavailable; try again shortly")
        return await super().record_event(name, sequence, payload, changes)


async def _job(store: JobStore) -> str:
    meditation, _ = await store.create(
        conversation="conversations/0123456789abcdef",
        owner="tester",
        request_id="",
        options=MeditationOptions(image_aspect=ImageAspect.LANDSCAPE, skip_cache=False),
        queue_lease_seconds=60.0,
    )
    return meditation.name


async def test_an_event_is_recorded_once_after_the_database_comes_back(job_store: JobStore) -> None:
    name = await _job(job_store)
    store = _OutageStore(job_store, outage_writes=3)
    recorder = JobRecorder(meditation=name, store=store, write_policy=QUICK)
    await recorder.emit(StageChanged(stage=Stage.NARRATION, state=StageState.STARTED))
    await recorder.emit(StageChanged(stage=Stage.NARRATION, state=StageState.SUCCEEDED))
    assert store.tries == 5
    page = await job_store.list_events(name, 0, 100)
    assert [event.sequence for event in page.events] == [1, 2]
    assert recorder.last_sequence == 2


async def test_an_outage_past_the_bound_fails_the_write_unavailable(job_store: JobStore) -> None:
    name = await _job(job_store)
    store = _OutageStore(job_store, outage_writes=10_000)
    policy = EventWritePolicy(max_wait_seconds=0.2, first_delay_seconds=0.01, max_delay_seconds=0.05)
    recorder = JobRecorder(meditation=name, store=store, write_policy=policy)
    with pytest.raises(GatewayError) as raised:
        await recorder.emit(StageChanged(stage=Stage.NARRATION, state=StageState.STARTED))
    assert raised.value.kind is FailureKind.UNAVAILABLE
    assert recorder.last_sequence == 0
