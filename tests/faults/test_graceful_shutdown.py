"""SIGTERM a replica while a job's stream is open on it: it drains and exits cleanly, and nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.stack import Stack, running_stack
from services.cli import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.faults.logs import assert_one_whole_log, same_log, stored_videos
from tests.servers.openai_compatible import DEFAULT_API_KEY, LatencySpec, OpenAICompatibleServer, ServerConfig

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
# Short, so a stream outlives it and is cut: the harder case, where the gateway must do the work again.
GRACE_SECONDS = 1.0
# What a SIGTERMed process may take past its grace: releasing its resources and leaving the interpreter,
# on a small machine shared with the other replicas and the test.
EXIT_MARGIN_SECONDS = 5.0
# The transcript is written this slowly, so the transcript stream (content) and the live narration (media)
# stay open while both replicas of a service are stopped and started again in turn.
TRANSCRIPT_SECONDS = 15.0
# The stage whose stream each service holds open.
STREAMING_STAGE = {"content": gateway_pb.STAGE_TRANSCRIPT, "media": gateway_pb.STAGE_NARRATION}
# What a job that nothing went wrong for records.
ORDINARY_EVENTS = {
    "accepted",
    "stage",
    "transcript_ready",
    "image_ready",
    "playlist_ready",
    "narration_ready",
    "video_ready",
    "completed",
}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def slow_writer() -> Iterator[OpenAICompatibleServer]:
    """An OpenAI-compatible server that streams the transcript over TRANSCRIPT_SECONDS."""
    config = ServerConfig(latency={"chat": LatencySpec(fixed_seconds=TRANSCRIPT_SECONDS)})
    with OpenAICompatibleServer(config) as server:
        yield server


@dataclass
class JobStream:
    """A meditation's GenerateMeditation stream, read in the background, with when each event arrived."""

    responses: list[gateway_pb.GenerateMeditationResponse] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    playlist_ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self, stack: Stack) -> None:
        async with stack.gateway_channel() as channel:
            stub = gateway_grpc.GatewayServiceStub(channel)
            created = await stub.CreateConversation(load_conversation(EXAMPLE), timeout=30)
            request = gateway_pb.GenerateMeditationRequest(conversation=created.conversation.name)
            async for response in stub.GenerateMeditation(request, timeout=180):
                self.responses.append(response)
                self.arrivals.append(time.monotonic())
                if response.HasField("playlist_ready"):
                    self.playlist_ready.set()

    def describe(self) -> str:
        """One line per event, for a failure message."""
        return "\n".join(f"#{r.sequence} {r.WhichOneof('event')}: {_brief(r)}" for r in self.responses)

    def stage_succeeded_at(self, stage: gateway_pb.Stage.ValueType) -> float:
        """When the stage's SUCCEEDED event arrived."""
        for response, arrival in zip(self.responses, self.arrivals, strict=True):
            if (
                response.HasField("stage")
                and response.stage.stage == stage
                and response.stage.state == gateway_pb.STAGE_STATE_SUCCEEDED
            ):
                return arrival
        raise AssertionError(f"{gateway_pb.Stage.Name(stage)} never succeeded")


def _brief(response: gateway_pb.GenerateMeditationResponse) -> str:
    event = response.WhichOneof("event")
    if event == "stage":
        stage = response.stage
        return (
            f"{gateway_pb.Stage.Name(stage.stage)} {gateway_pb.StageState.Name(stage.state)} {stage.detail}"
        )
    return str(getattr(response, event or "accepted")).replace("\n", " ")[:200]


@dataclass(frozen=True)
class Shutdown:
    """How one SIGTERMed replica went: its health after the signal, its exit status and how long it took."""

    statuses_after_signal: list[int]
    # The watch is cut (UNAVAILABLE) when the grace period ends, or when the process is gone.
    watch_ended_with: grpc.StatusCode
    exit_status: int
    seconds: float


async def _sigterm_watching_health(stack: Stack, key: str) -> Shutdown:
    """SIGTERMs one replica while watching its health, and waits for it to exit. (The open watch is an RPC
    in flight, so the replica takes its whole grace period.)"""
    async with stack.internal_channel(key) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert isinstance(first, health_pb2.HealthCheckResponse) and first.status == SERVING, first
        started = time.monotonic()
        stopping = asyncio.create_task(asyncio.to_thread(stack.stop, key, signal.SIGTERM))
        statuses: list[int] = []
        ended_with = grpc.StatusCode.OK
        try:
            while isinstance(response := await watch.read(), health_pb2.HealthCheckResponse):
                statuses.append(response.status)
        except grpc.aio.AioRpcError as error:
            ended_with = error.code()
        exit_status = await stopping
        return Shutdown(statuses, ended_with, exit_status, time.monotonic() - started)


@pytest.mark.parametrize("service", ["content", "media"])
async def test_a_replica_sigtermed_with_a_stream_open_drains_and_exits_and_nothing_is_lost(
    slow_writer: OpenAICompatibleServer, tmp_path: Path, service: str
) -> None:
    """Property: SIGTERM on a replica holding a job's stream (the transcript on content, the live narration
    on media) makes it report NOT_SERVING, finish or cut its streams within the grace period and exit 0;
    the gateway carries the work on the other replica, and the job completes once, with one whole log and
    one pair of videos.

    With round-robin the test cannot tell which replica holds the stream, so it stops both in turn (each
    restarted before the next is stopped), and checks that the stream was still open when the last signal
    went out: whichever replica held it was SIGTERMed with it open."""
    environment = {
        "STILLPOINT_GRACE_SECONDS": str(GRACE_SECONDS),
        "STILLPOINT_TRANSCRIPT_PROVIDER": "openai",
        "STILLPOINT_TRANSCRIPT_MODEL": "gpt-5.6-terra",
        "OPENAI_API_KEY": DEFAULT_API_KEY,
        "OPENAI_BASE_URL": slow_writer.base_url,
        # A failure must show, not be papered over by the offline writer.
        "STILLPOINT_FALLBACK_TO_OFFLINE": "false",
        # libx264 at once: a media replica restarts without probing for hardware encoders.
        "STILLPOINT_HARDWARE_ENCODING": "false",
    }
    with running_stack(tmp_path / "var", replicas={service: 2}, extra_environment=environment) as stack:
        job = JobStream()
        reading = asyncio.create_task(job.read(stack))
        shutdowns: dict[str, Shutdown] = {}
        last_signal_at = 0.0
        try:
            # The first sentence is spoken: the transcript stream and the live narration are both open.
            await asyncio.wait_for(job.playlist_ready.wait(), timeout=60)
            for key in stack.replicas(service):
                last_signal_at = time.monotonic()
                shutdowns[key] = await _sigterm_watching_health(stack, key)
                await asyncio.to_thread(stack.start, key)
            await asyncio.wait_for(reading, timeout=120)
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            raise AssertionError(
                f"the job did not complete ({error!r}); its stream:\n{job.describe()}"
            ) from None
        finally:
            reading.cancel()
        name = job.responses[0].accepted.meditation
        async with stack.gateway_channel() as channel:
            request = gateway_pb.WatchMeditationRequest(name=name, after_sequence=0)
            stored = [r async for r in gateway_grpc.GatewayServiceStub(channel).WatchMeditation(request)]

    for key, shutdown in shutdowns.items():
        assert shutdown.statuses_after_signal == [NOT_SERVING], (key, shutdown)
        assert shutdown.watch_ended_with == grpc.StatusCode.UNAVAILABLE, (key, shutdown)
        assert shutdown.exit_status == 0, (key, shutdown)
        assert shutdown.seconds <= GRACE_SECONDS + EXIT_MARGIN_SECONDS, (key, shutdown)
    # Whichever replica held the stream was SIGTERMed with it open (else: lengthen TRANSCRIPT_SECONDS).
    assert job.stage_succeeded_at(STREAMING_STAGE[service]) > last_signal_at, "the stream ended too soon"
    assert_one_whole_log(job.responses)
    # A stream cut by the shutdown fails the job's attempt (streams have no retry layer of their own: the
    # job's retry policy is the one layer), and the next attempt completes it; nothing else went wrong.
    kinds = {r.WhichOneof("event") for r in job.responses}
    assert kinds <= ORDINARY_EVENTS | {"attempt_failed"}, job.describe()
    retries = [r.attempt_failed for r in job.responses if r.HasField("attempt_failed")]
    assert all(f"{service} service is unavailable" in retry.reason for retry in retries), job.describe()
    failed = [
        r.stage.stage
        for r in job.responses
        if r.HasField("stage") and r.stage.state == gateway_pb.STAGE_STATE_FAILED
    ]
    assert failed == [STREAMING_STAGE[service]] * len(retries), job.describe()
    # The stored log is the one the stream showed: nothing recorded that the stream did not see.
    same_log(job.responses, stored)
    videos = [r.video_ready.quality for r in job.responses if r.HasField("video_ready")]
    assert videos == [gateway_pb.VIDEO_QUALITY_QUICK, gateway_pb.VIDEO_QUALITY_ENHANCED]
    assert len(stored_videos(stack.var_root, name)) == 2
    # The streams the grace periods cut ran their cleanup: no scratch file (live segments, audio) is left.
    assert [path for path in (stack.var_root / "work").rglob("*") if path.is_file()] == []
