"""Object storage fails under running jobs (refused, cut mid-upload, down for longer than a job's attempts):
jobs complete or fail naming storage, each log stays whole, and nothing is left orphaned in the bucket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from scripts.stack import Stack, running_stack
from services.cli import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.faults.logs import assert_one_whole_log
from tests.faults.tcp_proxy import FaultyTcpProxy, faulty_proxy
from tests.servers.supabase_storage import SupabaseStorageServer

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
SERVICE_KEY = "service-role-fault-key"
BUCKET = "stillpoint-faults"
# Each job, from its request to its last event; a brief outage costs one attempt and its retry delay.
JOB_WITHIN_SECONDS = 90.0
# Shorter than one attempt's storage retries plus the job's retry delays: the job rides it out.
BRIEF_OUTAGE_SECONDS = 6.0


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[tuple[SupabaseStorageServer, FaultyTcpProxy]]:
    """A Supabase-compatible storage server, reached only through a proxy the test can break."""
    with SupabaseStorageServer(tmp_path / "supabase", service_key=SERVICE_KEY) as server:
        host, port = server.url.removeprefix("http://").rstrip("/").split(":")
        with faulty_proxy(host, int(port)) as proxy:
            yield server, proxy


@pytest.fixture
def stack(tmp_path: Path, storage: tuple[SupabaseStorageServer, FaultyTcpProxy]) -> Iterator[Stack]:
    _, proxy = storage
    environment = {
        "STILLPOINT_STORAGE": "supabase",
        "SUPABASE_URL": proxy.url,
        "SUPABASE_KEY": SERVICE_KEY,
        "STILLPOINT_SUPABASE_BUCKET": BUCKET,
        # A short lease: the janitor, which settles owed deletions, runs every third of it.
        "STILLPOINT_JOB_LEASE_SECONDS": "3",
    }
    with running_stack(tmp_path / "var", extra_environment=environment) as started:
        yield started


async def _generate(
    stub: gateway_grpc.GatewayServiceStub, conversation: str, proxy: FaultyTcpProxy, outage_seconds: float
) -> tuple[list[gateway_pb.GenerateMeditationResponse], grpc.aio.AioRpcError | None, float]:
    """Runs a job with storage refused for `outage_seconds` from its live preview's start (0: no outage).
    Returns its events, the status it ended with if not OK, and its wall time."""
    seen: list[gateway_pb.GenerateMeditationResponse] = []
    request = gateway_pb.GenerateMeditationRequest(
        conversation=conversation, options=gateway_pb.MeditationOptions(skip_cache=True)
    )
    started = time.monotonic()
    healing: asyncio.Task[None] | None = None

    async def heal_later() -> None:
        await asyncio.sleep(outage_seconds)
        proxy.heal()

    try:
        async for response in stub.GenerateMeditation(request, timeout=JOB_WITHIN_SECONDS):
            seen.append(response)
            # The live preview is in storage and its narration goes on uploading segments.
            if outage_seconds and healing is None and response.HasField("playlist_ready"):
                proxy.refuse()
                healing = asyncio.create_task(heal_later())
    except grpc.aio.AioRpcError as error:
        return seen, error, time.monotonic() - started
    finally:
        # Storage answers again once the job has ended, whether or not the outage had run its course.
        if healing is not None:
            healing.cancel()
        proxy.heal()
    return seen, None, time.monotonic() - started


def _objects_of(server: SupabaseStorageServer, meditation: str) -> list[str]:
    meditation_id = meditation.rsplit("/", 1)[1]
    return [name for name in server.stored_names(BUCKET) if meditation_id in name]


async def test_storage_refused_mid_job_costs_one_attempt_and_leaves_one_set_of_assets(
    stack: Stack, storage: tuple[SupabaseStorageServer, FaultyTcpProxy]
) -> None:
    """Property: with storage refusing every connection for 6 s from the moment the live preview plays, the
    job completes within 90 s with one whole log; the bucket then holds the assets of its last attempt only
    (the narration, the live preview, two videos), none from the attempt the outage failed."""
    server, proxy = storage
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        conversation = (await stub.CreateConversation(load_conversation(EXAMPLE))).conversation.name
        seen, status, outage_seconds = await _generate(stub, conversation, proxy, BRIEF_OUTAGE_SECONDS)
    assert status is None, status
    assert proxy.connections_refused + proxy.connections_cut > 0, "the outage touched nothing"
    assert_one_whole_log(seen)
    # Whether the outage costs an attempt depends on where it lands (between uploads, storage's own retries
    # ride it out); an attempt it does cost says why.
    attempts_failed = [response.attempt_failed for response in seen if response.HasField("attempt_failed")]
    assert all("storage" in failed.reason for failed in attempts_failed), attempts_failed
    meditation = seen[0].accepted.meditation
    kept = {name.split("/", 1)[0] for name in _objects_of(server, meditation)}
    assert kept == {"narrations", "live", "videos"}
    videos = [n for n in _objects_of(server, meditation) if n.startswith("videos/") and n.endswith(".mp4")]
    assert len(videos) == 2, videos
    narrations = [
        n for n in _objects_of(server, meditation) if n.startswith("narrations/") and n.endswith(".aac")
    ]
    assert len(narrations) == 1, narrations
    print(
        f"\nfault cost: storage refused {BRIEF_OUTAGE_SECONDS:g} s once the live preview plays: "
        f"job {outage_seconds:.1f} s"
    )


@pytest.mark.timeout(240)
async def test_storage_down_past_every_attempt_fails_the_job_naming_storage_and_its_assets_go_after(
    stack: Stack, storage: tuple[SupabaseStorageServer, FaultyTcpProxy]
) -> None:
    """Property: with storage refusing until the job has used its three attempts, the job ends FAILED with
    UNAVAILABLE naming storage; once storage answers again, a janitor deletes what its attempts left, so
    the bucket holds nothing of it."""
    server, proxy = storage
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        conversation = (await stub.CreateConversation(load_conversation(EXAMPLE))).conversation.name
        seen, status, seconds = await _generate(stub, conversation, proxy, JOB_WITHIN_SECONDS)
        assert status is not None
        assert status.code() == grpc.StatusCode.UNAVAILABLE, status
        assert "storage" in (status.details() or "").lower(), status.details()
        meditation = seen[0].accepted.meditation
        last: gateway_pb.GenerateMeditationResponse | gateway_pb.WatchMeditationResponse = seen[-1]
        if not last.HasField("completed"):
            # An asset's event (the image, painted during the outage) could not be signed while storage was
            # down, which ends the stream UNAVAILABLE too: a client watches on once storage answers.
            request = gateway_pb.WatchMeditationRequest(name=meditation, after_sequence=last.sequence)
            rest = [response async for response in stub.WatchMeditation(request, timeout=JOB_WITHIN_SECONDS)]
            last = rest[-1]
    assert last.completed.state == gateway_pb.MEDITATION_STATE_FAILED
    assert _objects_of(server, meditation), "the live preview played before the outage: it was stored"
    deadline = time.monotonic() + 60
    while _objects_of(server, meditation):
        assert time.monotonic() < deadline, _objects_of(server, meditation)
        await asyncio.sleep(0.5)  # polling the bucket, with a deadline
    print(f"\nfault cost: storage down past every attempt: FAILED after {seconds:.1f} s")
