"""Stillpoint's pipeline as a client sees it: the gateway's GenerateMeditation stream, timed per event."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import grpc

from bench.conversations import ConversationTurn
from bench.jobs import JobTimeline, StageSpan
from services.cli import gateway_channel
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc

# Longer than any healthy job takes here, even 50 at once; a stream that outlives it counts as failed.
DEFAULT_JOB_TIMEOUT_SECONDS = 300.0
_ROLES = {"user": gateway_pb.MESSAGE_ROLE_USER, "assistant": gateway_pb.MESSAGE_ROLE_ASSISTANT}
# Checked by name, so the bench works with and without the live HLS preview in the contract.
PLAYLIST_EVENT = "playlist_ready"
_STAGE_ENDS = {
    gateway_pb.STAGE_STATE_SUCCEEDED: "succeeded",
    gateway_pb.STAGE_STATE_FAILED: "failed",
    gateway_pb.STAGE_STATE_STOPPED: "stopped",
}


def stage_name(stage: int) -> str:
    """`STAGE_QUICK_VIDEO` → `quick_video`; a stage unknown to this copy of the contract keeps its number."""
    try:
        return gateway_pb.Stage.Name(stage).removeprefix("STAGE_").lower()  # type: ignore[arg-type]
    except ValueError:
        return f"stage_{stage}"


async def create_conversation(stub: gateway_grpc.GatewayServiceStub, turns: list[ConversationTurn]) -> str:
    """Stores a conversation (not timed) and returns its name."""
    request = gateway_pb.CreateConversationRequest(title="bench")
    for turn in turns:
        request.messages.add(role=_ROLES[turn.role], text=turn.text)
    response = await stub.CreateConversation(request, timeout=60)
    return response.conversation.name


async def run_job(
    stub: gateway_grpc.GatewayServiceStub,
    conversation: str,
    index: int,
    timeout_seconds: float = DEFAULT_JOB_TIMEOUT_SECONDS,
) -> JobTimeline:
    """Streams one meditation, timing every event from the moment the request is sent."""
    timeline = JobTimeline(pipeline="stillpoint", index=index)
    # Distinct conversations already miss the transcript cache; skip_cache also makes the image (whose
    # prompts come from a finite set) fresh, so every job is a cold one. Square, as the reference pipeline's
    # DALL-E 3 image.
    request = gateway_pb.GenerateMeditationRequest(
        conversation=conversation,
        options=gateway_pb.MeditationOptions(skip_cache=True, image_aspect=gateway_pb.IMAGE_ASPECT_SQUARE),
    )
    open_stages: dict[str, float] = {}
    # time.monotonic(), the clock the bench's storage server times each version of the live playlist with.
    started = time.monotonic()
    timeline.started_monotonic_seconds = started
    try:
        async for response in stub.GenerateMeditation(request, timeout=timeout_seconds):
            now = time.monotonic() - started
            milestones = timeline.milestones
            if milestones["first_event"] is None:
                milestones["first_event"] = now
            kind = response.WhichOneof("event")
            if kind == "accepted":
                timeline.accepted_seconds = now
                timeline.meditation = response.accepted.meditation
            elif kind == PLAYLIST_EVENT:
                # The live preview is playable on arrival; whichever of it and the QUICK video comes first.
                if milestones["first_playable"] is None:
                    milestones["first_playable"] = now
                    timeline.first_playable_kind = PLAYLIST_EVENT
            elif kind == "stage":
                name = stage_name(response.stage.stage)
                if response.stage.state == gateway_pb.STAGE_STATE_STARTED:
                    open_stages[name] = now
                    if timeline.first_stage_started_seconds is None:
                        timeline.first_stage_started_seconds = now
                elif response.stage.state in _STAGE_ENDS:
                    begun = open_stages.pop(name, now)
                    # The stage's own time: a stage another service ran arrives in a burst once it is over.
                    reported = (
                        response.stage.stage_elapsed.ToTimedelta().total_seconds()
                        if response.stage.HasField("stage_elapsed")
                        else None
                    )
                    state = _STAGE_ENDS[response.stage.state]
                    timeline.stages.append(StageSpan(name, begun, now, state, reported))
            elif kind == "video_ready":
                if response.video_ready.quality == gateway_pb.VIDEO_QUALITY_QUICK:
                    milestones["quick_video"] = now
                    if milestones["first_playable"] is None:
                        milestones["first_playable"] = now
                        timeline.first_playable_kind = "quick_video"
                elif response.video_ready.quality == gateway_pb.VIDEO_QUALITY_ENHANCED:
                    milestones["enhanced_video"] = now
            elif kind == "completed":
                milestones["completed"] = now
                timeline.succeeded = response.completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
                if not timeline.succeeded:
                    state = gateway_pb.MeditationState.Name(response.completed.state)
                    timeline.error = f"completed as {state}"
    except grpc.aio.AioRpcError as error:
        timeline.succeeded = False
        timeline.error = f"{error.code().name}: {error.details()}"[:500]
    # Stages still running when the stream ended (a job cut at its deadline) show how far they got.
    ended = time.monotonic() - started
    for name, begun in open_stages.items():
        timeline.stages.append(StageSpan(name, begun, ended, "cut"))
    return timeline


async def run_jobs(
    addresses: Sequence[str],
    api_key: str,
    conversations: list[list[ConversationTurn]],
    *,
    concurrent: bool,
    first_index: int = 0,
    timeout_seconds: float = DEFAULT_JOB_TIMEOUT_SECONDS,
) -> list[JobTimeline]:
    """Creates the conversations, then runs a job for each: one after another, or all at once.

    With several gateway replicas, job i goes to gateway i mod n (a channel each), as a load balancer in
    front of them would spread clients; the conversations are made through the first."""
    if not addresses:
        raise ValueError("needs at least one gateway address")
    async with contextlib.AsyncExitStack() as channels:
        stubs = [
            gateway_grpc.GatewayServiceStub(
                await channels.enter_async_context(gateway_channel(address, api_key))
            )
            for address in addresses
        ]
        names = [await create_conversation(stubs[0], turns) for turns in conversations]
        numbered = [
            (stubs[position % len(stubs)], name, first_index + position)
            for position, name in enumerate(names)
        ]
        if concurrent:
            return list(
                await asyncio.gather(*(run_job(stub, n, i, timeout_seconds) for stub, n, i in numbered))
            )
        return [await run_job(stub, name, index, timeout_seconds) for stub, name, index in numbered]
