"""One full job through real in-process gateway, content and media servers, traced into memory: one trace
from the GenerateMeditation call, the job's span over one span per stage, and every call to content and
media continued on the server it reached, with a span per provider call there."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from services import tracing
from services.gateway.events import Stage
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.gateway.test_servicer import collect, create_conversation
from tests.recorded_spans import recorded_spans
from tests.waiting import wait_until

# What the stages ask of content and media.
_PIPELINE_CALLS = {
    "CollectSourceContent",
    "GenerateTranscript",
    "CreateImagePrompt",
    "GenerateImage",
    "NarrateLive",
    "RenderVideo",
}


def _finished_job_spans(spans: Sequence[ReadableSpan], meditation: str) -> list[ReadableSpan]:
    return [
        span
        for span in spans
        if span.name == "meditation.job"
        and (span.attributes or {}).get(tracing.MEDITATION_ATTRIBUTE) == meditation
    ]


def _spans_in_trace(spans: Sequence[ReadableSpan], trace_id: int) -> list[ReadableSpan]:
    return [span for span in spans if span.context is not None and span.context.trace_id == trace_id]


def _is_trace_complete(spans: Sequence[ReadableSpan], meditation: str) -> bool:
    jobs = _finished_job_spans(spans, meditation)
    if not jobs or jobs[0].context is None:
        return False
    in_trace = _spans_in_trace(spans, jobs[0].context.trace_id)
    ended = {span.context.span_id for span in in_trace if span.context is not None}
    return all(span.parent is None or span.parent.span_id in ended for span in in_trace)


async def test_one_job_is_one_trace_with_a_span_per_stage_under_the_job(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    spans = recorded_spans()
    name = await create_conversation(gateway_stub)
    responses = await collect(
        gateway_stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=name))
    )
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    meditation = responses[0].accepted.meditation
    # The job's span ends before its last event is recorded, but a client span ends a moment after its
    # call (when the call's status is read): wait until every span a server ended has its caller's too.
    await wait_until(
        lambda: _is_trace_complete(spans.get_finished_spans(), meditation), what="the job's spans"
    )
    [job] = _finished_job_spans(spans.get_finished_spans(), meditation)
    assert job.context is not None
    in_trace = _spans_in_trace(spans.get_finished_spans(), job.context.trace_id)
    assert job.status.status_code is not StatusCode.ERROR
    assert job.attributes is not None
    assert job.attributes[tracing.ATTEMPT_ATTRIBUTE] == 1
    stage_spans = [span for span in in_trace if span.name.startswith("stage.")]
    assert all(span.parent is not None and span.parent.span_id == job.context.span_id for span in stage_spans)
    # Media makes the QUICK video within the narration, so the gateway runs every other stage (UPLOAD once,
    # the ENHANCED video's) and the QUICK video is a span under media's NarrateLive.
    assert sorted(span.name for span in stage_spans) == sorted(
        f"stage.{stage.value}" for stage in Stage if stage is not Stage.QUICK_VIDEO
    )
    [quick] = [span for span in in_trace if span.name == "media.quick_video"]
    assert quick.parent is not None
    [narrating] = [span for span in in_trace if span.context and span.context.span_id == quick.parent.span_id]
    assert (narrating.name, narrating.kind) == (
        "stillpoint.media.v2.MediaService/NarrateLive",
        SpanKind.SERVER,
    )
    # The job continues the trace of the call that asked for it.
    [call] = [
        span for span in in_trace if span.name == "stillpoint.gateway.v1.GatewayService/GenerateMeditation"
    ]
    assert call.kind is SpanKind.SERVER
    assert call.context is not None
    assert job.parent is not None
    assert job.parent.span_id == call.context.span_id
    # Every call to content and media: a gateway CLIENT span under a stage, content's or media's SERVER
    # span under it.
    by_id = {span.context.span_id: span for span in in_trace if span.context is not None}
    backend_calls = [
        span
        for span in in_trace
        if span.kind is SpanKind.SERVER and span.name.startswith(("stillpoint.content.", "stillpoint.media."))
    ]
    called = {span.name.rpartition("/")[2] for span in backend_calls}
    assert called >= _PIPELINE_CALLS, called
    for served in backend_calls:
        assert served.parent is not None
        client = by_id[served.parent.span_id]
        assert client.kind is SpanKind.CLIENT
        assert client.name == served.name
        assert client.status.status_code is not StatusCode.ERROR
        assert client.parent is not None
        caller = by_id[client.parent.span_id].name
        if served.name.rpartition("/")[2] == "NarrateLive":
            # Opened by the job beside its source stage, before the narration's stage begins (a new call
            # is taken late under load): the job's own call.
            assert caller == job.name, (served.name, caller)
        elif served.name.rpartition("/")[2] in _PIPELINE_CALLS:
            assert caller.startswith("stage."), (served.name, caller)
        else:
            # Bookkeeping around the job (its conversation checked, its links signed): the call's own.
            assert caller in {call.name, job.name}, (served.name, caller)
    # Each provider call, in the server span of the call that made it.
    providers = [span for span in in_trace if span.name.startswith("provider.")]
    assert {"provider.transcript", "provider.image", "provider.speech"} <= {span.name for span in providers}
    for span in providers:
        assert span.parent is not None
        assert by_id[span.parent.span_id] in backend_calls, span.name
    # Nothing of the conversation in any span: attributes name stages, attempts and the meditation only.
    for span in in_trace:
        for value in (span.attributes or {}).values():
            assert "relentless" not in str(value)
