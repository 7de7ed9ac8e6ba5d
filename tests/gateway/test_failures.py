"""A failing stage ends the stream with its status after a `completed` event, and the job records why."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from scripts.stack import free_port
from services import serving
from services.cli import gateway_channel
from services.gateway.api_keys import ApiKeyStore
from services.gateway.authentication import Authenticator
from services.gateway.backends import ContentClient, MediaClient
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.events import Accepted, Completed, SequencedEvent, Stage, StageChanged
from services.gateway.jobs import JobLimits, MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.models import MeditationOptions, MeditationState, Message
from services.gateway.pipeline import MeditationPipeline, StageTimeouts
from services.gateway.servicer import AuthenticationInterceptor, GatewayServicer
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.conftest import GATEWAY_SERVICE
from tests.gateway.test_servicer import SAMPLE_MESSAGES
from tests.waiting import wait_until

# One attempt per job, so a failure surfaces at once (retries have a test of their own).
ONE_ATTEMPT = JobLimits(max_attempts=1)
OWNER = "tester"


@asynccontextmanager
async def gateway(
    job_store: JobStore,
    api_keys: ApiKeyStore,
    content_channel: grpc.aio.Channel,
    media_channel: grpc.aio.Channel,
    timeouts: StageTimeouts,
    limits: JobLimits = ONE_ATTEMPT,
    *,
    is_asset_keeper: bool = False,
) -> AsyncIterator[gateway_grpc.GatewayServiceStub]:
    """A gateway on `127.0.0.1:0`; with `is_asset_keeper` its jobs also delete and sign assets through
    media, as the real gateway's do."""
    content = ContentClient(content_channel, timeouts)
    media = MediaClient(media_channel, timeouts)
    jobs = MeditationJobs(
        job_store,
        content,
        MeditationPipeline(content, media, timeouts),
        media=media if is_asset_keeper else None,
        limits=limits,
    )
    running = await serving.start_server(
        service_names=[GATEWAY_SERVICE],
        register=lambda server: gateway_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(content, jobs), server
        ),
        address="127.0.0.1:0",
        interceptors=[AuthenticationInterceptor(Authenticator(api_keys=api_keys))],
    )
    async with gateway_channel(f"127.0.0.1:{running.port}", (await api_keys.create(OWNER)).key) as channel:
        yield gateway_grpc.GatewayServiceStub(channel)
    await running.stop(0)
    await jobs.close()


async def run_until_status(
    stub: gateway_grpc.GatewayServiceStub,
) -> tuple[list[gateway_pb.GenerateMeditationResponse], grpc.aio.AioRpcError]:
    created = await stub.CreateConversation(gateway_pb.CreateConversationRequest(messages=SAMPLE_MESSAGES))
    seen: list[gateway_pb.GenerateMeditationResponse] = []
    stream = stub.GenerateMeditation(
        gateway_pb.GenerateMeditationRequest(conversation=created.conversation.name)
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _read_into(stream, seen)
    return seen, raised.value


async def _read_into(
    stream: grpc.aio.UnaryStreamCall,  # type: ignore[type-arg]
    into: list[gateway_pb.GenerateMeditationResponse],
) -> None:
    async for response in stream:
        into.append(response)


async def test_unreachable_media_service_fails_the_narration_as_unavailable(
    content_channel: grpc.aio.Channel, job_store: JobStore, api_keys: ApiKeyStore
) -> None:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as dead_media,
        gateway(job_store, api_keys, content_channel, dead_media, StageTimeouts()) as stub,
    ):
        seen, status = await run_until_status(stub)
        meditation = seen[0].accepted.meditation
        fetched = await stub.GetMeditation(gateway_pb.GetMeditationRequest(name=meditation))
    assert status.code() == grpc.StatusCode.UNAVAILABLE
    assert "media service is unavailable" in (status.details() or "")
    failed = [r.stage for r in seen if r.HasField("stage") and r.stage.state == gateway_pb.STAGE_STATE_FAILED]
    assert [stage.stage for stage in failed] == [gateway_pb.STAGE_NARRATION]
    assert seen[-1].completed.state == gateway_pb.MEDITATION_STATE_FAILED
    assert fetched.meditation.state == gateway_pb.MEDITATION_STATE_FAILED
    assert "unavailable" in fetched.meditation.failure_message


async def test_a_retryable_failure_is_attempted_again_then_given_up_with_the_reason(
    content_channel: grpc.aio.Channel, job_store: JobStore, api_keys: ApiKeyStore
) -> None:
    """Property: a failure another attempt may not repeat (media unreachable) is announced and retried, and
    after the last attempt the job ends FAILED with the reason; the log stays whole."""
    limits = JobLimits(max_attempts=2, retry_delay_seconds=0.1)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as dead_media,
        gateway(job_store, api_keys, content_channel, dead_media, StageTimeouts(), limits) as stub,
    ):
        seen, status = await run_until_status(stub)
        # Dead-lettered in the job store too, where operators list them (`stillpoint jobs dead-letters`).
        await wait_until(_has_dead_letters(job_store), what="the job to be marked dead-lettered")
    assert status.code() == grpc.StatusCode.UNAVAILABLE
    assert "gave up after 2 attempts" in (status.details() or "")
    retries = [r.attempt_failed for r in seen if r.HasField("attempt_failed")]
    assert [(retry.attempt, retry.max_attempts) for retry in retries] == [(1, 2)]
    assert "media service is unavailable" in retries[0].reason
    narration_failures = [
        r.stage
        for r in seen
        if r.HasField("stage")
        and r.stage.stage == gateway_pb.STAGE_NARRATION
        and r.stage.state == gateway_pb.STAGE_STATE_FAILED
    ]
    assert len(narration_failures) == 2
    assert [r.sequence for r in seen] == list(range(1, len(seen) + 1))
    assert seen[-1].completed.state == gateway_pb.MEDITATION_STATE_FAILED
    [letter] = await job_store.list_dead_letters(10)
    assert (letter.name, letter.owner, letter.attempts) == (seen[0].accepted.meditation, OWNER, 2)
    assert "gave up after 2 attempts" in letter.reason


def _has_dead_letters(job_store: JobStore) -> Callable[[], Awaitable[bool]]:
    async def has_dead_letters() -> bool:
        return bool(await job_store.list_dead_letters(1))

    return has_dead_letters


async def test_stage_past_its_deadline_is_deadline_exceeded_and_replays_the_same(
    content_channel: grpc.aio.Channel,
    media_channel: grpc.aio.Channel,
    job_store: JobStore,
    api_keys: ApiKeyStore,
) -> None:
    async with gateway(
        job_store, api_keys, content_channel, media_channel, StageTimeouts(video_seconds=0.001)
    ) as stub:
        seen, status = await run_until_status(stub)
        replay: list[gateway_pb.GenerateMeditationResponse] = []
        with pytest.raises(grpc.aio.AioRpcError) as replayed:
            await _read_into(
                stub.WatchMeditation(gateway_pb.WatchMeditationRequest(name=seen[0].accepted.meditation)),
                replay,
            )
    assert status.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The QUICK video is made within the narration's budget (media makes it as the narration ends): the
    # ENHANCED one is the first the gateway waits for.
    assert "enhanced_video" in (status.details() or "")
    assert replayed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [r.sequence for r in replay] == [r.sequence for r in seen]


async def test_a_job_given_back_at_shutdown_is_resumed_by_another_gateway_with_no_gap(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, job_store: JobStore
) -> None:
    timeouts = StageTimeouts()
    content = ContentClient(content_channel, timeouts)
    media = MediaClient(media_channel, timeouts)
    first = MeditationJobs(
        job_store, content, MeditationPipeline(content, media, timeouts), holder="gateway-first"
    )
    conversation = await content.create_conversation(OWNER, "", [_message(m) for m in SAMPLE_MESSAGES], "")
    name = await first.start(OWNER, conversation.name, "", MeditationOptions())
    seen = [
        event async for event in _until_stage(first.watch(OWNER, name, after_sequence=0), Stage.NARRATION)
    ]
    await first.close()  # SIGTERM: the job is given back, not failed
    assert (await job_store.get(name)).state is MeditationState.RUNNING
    measured: list[str] = []

    class MeasuringCounted(MediaClient):
        async def measure_meditation_assets(self, meditation: str) -> int:
            measured.append(meditation)
            return await super().measure_meditation_assets(meditation)

    second = MeditationJobs(
        job_store,
        content,
        MeditationPipeline(content, MeasuringCounted(media_channel, timeouts), timeouts),
        holder="gateway-second",
    )
    assert await second.resume_orphans() == [name]
    rest = [event async for event in second.watch(OWNER, name, after_sequence=seen[-1].sequence)]
    await second.close()
    whole = [*seen, *rest]
    assert [event.sequence for event in whole] == list(range(1, len(whole) + 1))
    assert sum(isinstance(event.event, Accepted) for event in whole) == 1
    assert isinstance(whole[-1].event, Completed)
    assert whole[-1].event.state is MeditationState.SUCCEEDED
    # The first attempt may have left assets of its own: the resumed job's are measured, not added up.
    assert measured == [name]
    assert (await job_store.get(name)).stored_bytes == await media.measure_meditation_assets(name)


async def test_a_running_job_cannot_be_claimed_by_a_second_gateway_while_its_lease_holds(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, job_store: JobStore
) -> None:
    timeouts = StageTimeouts()
    content = ContentClient(content_channel, timeouts)
    jobs = MeditationJobs(
        job_store, content, MeditationPipeline(content, MediaClient(media_channel, timeouts), timeouts)
    )
    conversation = await content.create_conversation(OWNER, "", [_message(m) for m in SAMPLE_MESSAGES], "")
    name = await jobs.start(OWNER, conversation.name, "", MeditationOptions())
    # Queued, the job is anyone's to take; once a dispatcher has taken it, it is held.
    [_ async for _ in _until_stage(jobs.watch(OWNER, name, after_sequence=0), Stage.SOURCE)]
    assert not await job_store.claim(name, "gateway-intruder", 30)
    assert name not in await job_store.list_claimable(10)
    assert await job_store.claim(name, jobs.holder, 30)  # renewal by the owner
    await jobs.cancel(OWNER, name)
    await jobs.close()


async def _until_stage(events: AsyncIterator[SequencedEvent], stage: Stage) -> AsyncIterator[SequencedEvent]:
    async for event in events:
        yield event
        if isinstance(event.event, StageChanged) and event.event.stage is stage:
            return


def _message(proto: gateway_pb.Message) -> Message:
    return Message(
        role="user" if proto.role == gateway_pb.MESSAGE_ROLE_USER else "assistant", text=proto.text
    )


async def test_an_owner_past_their_concurrent_job_limit_is_refused_but_their_retries_are_not(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, job_store: JobStore
) -> None:
    timeouts = StageTimeouts()
    content = ContentClient(content_channel, timeouts)
    media = MediaClient(media_channel, timeouts)
    jobs = MeditationJobs(
        job_store,
        content,
        MeditationPipeline(content, media, timeouts),
        media=media,
        limits=JobLimits(max_jobs_per_owner=1),
    )
    messages = [_message(m) for m in SAMPLE_MESSAGES]
    alices = await content.create_conversation("alice", "", messages, "")
    bobs = await content.create_conversation("bob", "", messages, "")
    first = await jobs.start("alice", alices.name, "tap-1", MeditationOptions())
    with pytest.raises(GatewayError) as refused:
        await jobs.start("alice", alices.name, "tap-2", MeditationOptions())
    assert refused.value.kind is FailureKind.EXHAUSTED
    assert "limit is 1" in refused.value.message
    assert await jobs.start("alice", alices.name, "tap-1", MeditationOptions()) == first
    other = await jobs.start("bob", bobs.name, "", MeditationOptions())
    for owner, name in (("alice", first), ("bob", other)):
        await jobs.cancel(owner, name)
    await jobs.close()


async def test_jobs_past_a_replicas_limit_wait_in_the_queue_and_past_the_queues_limit_are_refused(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, job_store: JobStore
) -> None:
    """Property: a replica runs at most `max_running_jobs`; the next job waits in the queue (accepted, then
    started once a slot frees), and past `max_queued_jobs` waiting a new job is RESOURCE_EXHAUSTED."""
    timeouts = StageTimeouts()
    content = ContentClient(content_channel, timeouts)
    media = MediaClient(media_channel, timeouts)
    limits = JobLimits(max_running_jobs=1, max_queued_jobs=1, max_jobs_per_owner=10)
    jobs = MeditationJobs(
        job_store, content, MeditationPipeline(content, media, timeouts), media=media, limits=limits
    )
    conversation = await content.create_conversation(OWNER, "", [_message(m) for m in SAMPLE_MESSAGES], "")
    first = await jobs.start(OWNER, conversation.name, "", MeditationOptions())
    [
        _ async for _ in _until_stage(jobs.watch(OWNER, first, after_sequence=0), Stage.SOURCE)
    ]  # taken: running
    second = await jobs.start(OWNER, conversation.name, "", MeditationOptions())
    with pytest.raises(GatewayError) as refused:
        await jobs.start(OWNER, conversation.name, "", MeditationOptions())
    assert refused.value.kind is FailureKind.EXHAUSTED
    assert "waiting to start" in refused.value.message
    first_log = [event async for event in jobs.watch(OWNER, first, after_sequence=0)]
    second_log = [event async for event in jobs.watch(OWNER, second, after_sequence=0)]
    await jobs.close()
    for log in (first_log, second_log):
        assert isinstance(log[-1].event, Completed)
        assert log[-1].event.state is MeditationState.SUCCEEDED
    second_started = next(event for event in second_log if isinstance(event.event, StageChanged))
    assert second_started.event_time >= first_log[-1].event_time


async def test_a_failed_job_leaves_no_assets_but_keeps_its_log(
    content_channel: grpc.aio.Channel,
    media_channel: grpc.aio.Channel,
    job_store: JobStore,
    api_keys: ApiKeyStore,
    tmp_path: Path,
) -> None:
    """Property: a job that ends FAILED after its narration was stored (its video stage past the deadline)
    has its narration, live preview and videos deleted, like a cancelled one; its event log says why."""
    async with gateway(
        job_store,
        api_keys,
        content_channel,
        media_channel,
        StageTimeouts(video_seconds=0.001),
        is_asset_keeper=True,
    ) as stub:
        seen, status = await run_until_status(stub)
        meditation = seen[0].accepted.meditation
        replay: list[gateway_pb.GenerateMeditationResponse] = []
        with pytest.raises(grpc.aio.AioRpcError):
            await _read_into(stub.WatchMeditation(gateway_pb.WatchMeditationRequest(name=meditation)), replay)
        meditation_id = meditation.rsplit("/", 1)[-1]

        def nothing_left() -> bool:
            stored = (tmp_path / "storage").rglob("*")
            return not [p for p in stored if p.is_file() and meditation_id in str(p)]

        # Deleted once the end is recorded, so a watcher hears of the failure without waiting on storage.
        await wait_until(nothing_left, what="the failed job's assets are deleted")
    assert status.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert any(r.HasField("narration_ready") for r in seen), "the narration was stored before the failure"
    assert [r.sequence for r in replay] == [r.sequence for r in seen]
    assert replay[-1].completed.state == gateway_pb.MEDITATION_STATE_FAILED
