"""The three services as real processes: one meditation end to end, and the real grpcurl against them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.stack import Stack, running_stack
from services.certificates import make_internal_certificates
from services.cli import load_conversation
from services.serving import internal_channel_credentials
from services.tls import InternalTls
from stillpoint.content.v2 import content_service_pb2 as content_pb
from stillpoint.content.v2 import content_service_pb2_grpc as content_grpc
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc
from tests.asset_fetch import fetch
from tests.scrape import Samples, label_values, scrape, total
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "conversation.json"
GENERATE = "stillpoint.gateway.v1.GatewayService/GenerateMeditation"
# The job's calls whose servers' records the metric tests read: the scrape waits for all three.
_RECORDED_LAST = (
    ("gateway", GENERATE),
    ("content", "stillpoint.content.v2.ContentService/GenerateTranscript"),
    ("media", "stillpoint.media.v2.MediaService/NarrateLive"),
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """content, media and gateway as processes with their own var/ folder, speaking with the default
    offline voice (Piper), as `make demo` does; each serves /metrics on a port of its own."""
    environment = {"STILLPOINT_SPEECH_PROVIDER": "offline"}
    with running_stack(
        tmp_path_factory.mktemp("var"), extra_environment=environment, metrics=True
    ) as started:
        yield started


@dataclass(frozen=True)
class OneMeditation:
    """One meditation's stream, and every process's metrics just before and just after it."""

    responses: list[gateway_pb.GenerateMeditationResponse]
    before: dict[str, Samples]
    after: dict[str, Samples]

    def moved(self, service: str, name: str, **labels: str) -> float:
        """How much the meditation added to `name`'s samples (with `labels`) in `service`'s process."""
        return total(self.after[service], name, **labels) - total(self.before[service], name, **labels)


@pytest.fixture(scope="module")
def meditation(stack: Stack) -> OneMeditation:
    """The sample conversation made into a meditation once, for the tests of its stream and its metrics."""
    before = {key: scrape(url) for key, url in stack.metrics_urls.items()}

    async def generate() -> list[gateway_pb.GenerateMeditationResponse]:
        async with stack.gateway_channel() as channel:
            stub = gateway_grpc.GatewayServiceStub(channel)
            created = await stub.CreateConversation(load_conversation(EXAMPLE), timeout=30)
            request = gateway_pb.GenerateMeditationRequest(conversation=created.conversation.name)
            return [response async for response in stub.GenerateMeditation(request, timeout=300)]

    async def scraped_once_recorded() -> dict[str, Samples]:
        scraped: dict[str, Samples] = {}

        async def recorded() -> bool:
            scraped.update(
                await asyncio.to_thread(lambda: {key: scrape(url) for key, url in stack.metrics_urls.items()})
            )
            count = "grpc_server_call_duration_seconds_count"
            return all(
                total(scraped[service], count, grpc_method=method)
                > total(before[service], count, grpc_method=method)
                for service, method in _RECORDED_LAST
            )

        # A server records a call once its status is sent, a moment after the client has read its last
        # message: the gateway's stream, and media's narration, whose handler cleans up after its last
        # message (its encoder, its scratch folder) while the job goes on to an ENHANCED video that takes a
        # fraction of a second.
        await wait_until(
            recorded, what="the servers to record the job's calls", timeout_seconds=5, interval_seconds=0.1
        )
        return scraped

    responses = asyncio.run(generate())
    after = asyncio.run(scraped_once_recorded())
    return OneMeditation(responses, before, after)


def _stream_durations(path: Path) -> dict[str, tuple[str, float]]:
    """Codec and duration in seconds of the first video and audio stream."""
    with av.open(str(path)) as container:
        found: dict[str, tuple[str, float]] = {}
        for stream in container.streams:
            if stream.type in ("video", "audio") and stream.type not in found:
                assert stream.duration is not None and stream.time_base is not None
                found[stream.type] = (stream.codec_context.name, float(stream.duration * stream.time_base))
        return found


def test_one_meditation_streams_in_order_and_both_videos_match_the_narration(
    meditation: OneMeditation, tmp_path: Path
) -> None:
    responses = meditation.responses
    sequences = [r.sequence for r in responses]
    assert sequences == sorted(set(sequences)) and sequences[0] == 1
    kinds = [r.WhichOneof("event") for r in responses]
    assert kinds[0] == "accepted" and kinds[-1] == "completed"
    assert kinds.count("completed") == 1
    position = {kind: kinds.index(kind) for kind in set(kinds)}
    assert position["stage"] < position["transcript_ready"]
    assert position["transcript_ready"] < position["narration_ready"] < position["video_ready"]
    videos = [r.video_ready for r in responses if r.HasField("video_ready")]
    assert [v.quality for v in videos] == [gateway_pb.VIDEO_QUALITY_QUICK, gateway_pb.VIDEO_QUALITY_ENHANCED]
    narration = next(r.narration_ready for r in responses if r.HasField("narration_ready"))
    assert (narration.provider, narration.fallback_reason) == ("piper", "")
    narration_seconds = narration.duration.ToNanoseconds() / 1e9
    transcript = next(r.transcript_ready for r in responses if r.HasField("transcript_ready"))
    assert 400 <= transcript.word_count <= 500
    for video in videos:
        # Fetched over HTTP through the media endpoint's signed link, as a client elsewhere would.
        path = fetch(video.uri, tmp_path / f"{video.quality}.mp4")
        assert path.stat().st_size == video.size_bytes
        streams = _stream_durations(path)
        assert streams["video"][0] == "h264"
        assert streams["audio"][0] == "aac"
        assert abs(streams["video"][1] - narration_seconds) < 0.5
        assert abs(streams["audio"][1] - narration_seconds) < 0.5
    assert videos[0].height_pixels == 720
    assert (videos[1].width_pixels, videos[1].height_pixels) == (1792, 1024)
    completed = responses[-1].completed
    assert completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    assert {t.stage for t in completed.stage_timings} >= {
        gateway_pb.STAGE_TRANSCRIPT,
        gateway_pb.STAGE_NARRATION,
    }


def test_the_gateway_measures_its_rpcs_and_its_calls_to_content_and_media(meditation: OneMeditation) -> None:
    """Per-method gRPC metrics, server and client, from grpcio-observability; scraped from its /metrics."""
    ok = {"grpc_method": GENERATE, "grpc_status": "OK"}
    assert meditation.moved("gateway", "grpc_server_call_duration_seconds_count", **ok) == 1
    assert meditation.moved("gateway", "grpc_server_call_started_total", grpc_method=GENERATE) == 1
    # The buckets reach past prometheus-client's 10 s: a job's stream runs for minutes.
    buckets = {
        float(labels["le"])
        for name, labels, _ in meditation.after["gateway"]
        if name == "grpc_server_call_duration_seconds_bucket" and labels["le"] != "+Inf"
    }
    assert max(buckets) >= 600
    called = label_values(
        meditation.after["gateway"], "grpc_client_attempt_duration_seconds_count", "grpc_method"
    )
    for method in ("stillpoint.content.v2.ContentService/", "stillpoint.media.v2.MediaService/"):
        assert any(name.startswith(method) for name in called), called
    # The job's calls as their servers recorded them (the scrape waited for a record of each): one call each,
    # ended OK, none tried again. (The ENHANCED RenderVideo ends as the job does, and its server may record it
    # a moment after the scrape.)
    for service, method in _RECORDED_LAST[1:]:
        assert meditation.moved(service, "grpc_server_call_duration_seconds_count", grpc_method=method) == 1
        assert (
            meditation.moved(
                service, "grpc_server_call_duration_seconds_count", grpc_method=method, grpc_status="OK"
            )
            == 1
        ), (service, method)


def test_the_gateway_measures_the_job_its_stages_and_its_first_playable_media(
    stack: Stack, meditation: OneMeditation
) -> None:
    moved = meditation.moved
    assert moved("gateway", "stillpoint_jobs_finished_total", state="succeeded") == 1
    assert moved("gateway", "stillpoint_jobs_finished_total", state="failed") == 0
    assert total(meditation.after["gateway"], "stillpoint_jobs_running") == 0
    assert moved("gateway", "stillpoint_queue_wait_seconds_count") == 1
    assert total(meditation.after["gateway"], "stillpoint_queue_depth") == 0
    for stage in ("source", "transcript", "image", "narration", "quick_video", "enhanced_video"):
        assert (
            moved("gateway", "stillpoint_stage_duration_seconds_count", stage=stage, outcome="succeeded") == 1
        )
    # Each video is uploaded in a stage of its own.
    assert moved("gateway", "stillpoint_stage_duration_seconds_count", stage="upload") == 2
    assert (
        moved("gateway", "stillpoint_stage_duration_seconds_count", stage="narration", provider="piper") == 1
    )
    assert moved("gateway", "stillpoint_time_to_first_playable_seconds_count") == 1
    assert moved("gateway", "stillpoint_time_to_video_seconds_count", quality="quick") == 1
    assert moved("gateway", "stillpoint_time_to_video_seconds_count", quality="enhanced") == 1
    first_playable = moved("gateway", "stillpoint_time_to_first_playable_seconds_sum")
    assert 0 < first_playable < moved("gateway", "stillpoint_time_to_video_seconds_sum", quality="enhanced")

    # Read from the job database's pool at each scrape: nothing holds a connection between jobs. A janitor's
    # periodic query may hold one at the moment of a scrape (seen once in CI), so the pool is read again
    # until it is idle: a connection never given back would keep it from ever being so.
    def pool_is_idle() -> bool:
        scraped = scrape(stack.metrics_urls["gateway"])
        in_use = [value for name, _, value in scraped if name == "stillpoint_database_connections_in_use"]
        assert len(in_use) == 1, in_use
        return in_use == [0]

    asyncio.run(wait_until(pool_is_idle, what="the job database's pool to be idle", timeout_seconds=5))


def test_content_and_media_measure_caches_providers_encodes_and_uploads(meditation: OneMeditation) -> None:
    moved = meditation.moved
    for cache in ("transcripts", "images"):
        assert moved("content", "stillpoint_cache_requests_total", cache=cache, result="miss") == 1
    for capability in ("transcript", "image"):
        assert moved("content", "stillpoint_provider_calls_total", capability=capability, outcome="ok") == 1
    assert moved("content", "stillpoint_uploaded_bytes_total", storage="local", asset="images") > 0
    for profile in ("quick", "enhanced"):
        assert moved("media", "stillpoint_video_encode_seconds_count", profile=profile) == 1
        assert moved("media", "stillpoint_video_encode_seconds_per_media_second_count", profile=profile) == 1
    spoken = moved(
        "media", "stillpoint_provider_calls_total", provider="piper", capability="speech", outcome="ok"
    )
    assert spoken > 0
    for asset in ("narrations", "live", "videos"):
        assert moved("media", "stillpoint_uploaded_bytes_total", storage="local", asset=asset) > 0


def _grpcurl(
    *arguments: str, timeout_seconds: float = 120, transport: tuple[str, ...] = ("-plaintext",)
) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("grpcurl") or str(ROOT / ".venv" / "bin" / "grpcurl")
    return subprocess.run(
        [executable, *transport, *arguments],
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
        check=True,
    )


def _as(stack: Stack) -> tuple[str, str]:
    """grpcurl's arguments for the stack's API key, as the README shows them."""
    return ("-H", f"authorization: Bearer {stack.api_key}")


def test_grpcurl_lists_services_by_reflection_with_a_key_and_not_without(stack: Stack) -> None:
    listed = _grpcurl(*_as(stack), stack.gateway_address, "list").stdout.split()
    assert "stillpoint.gateway.v1.GatewayService" in listed
    assert "grpc.health.v1.Health" in listed
    described = _grpcurl(
        *_as(stack), stack.gateway_address, "describe", "stillpoint.gateway.v1.GatewayService"
    ).stdout
    assert "rpc GenerateMeditation" in described and "returns ( stream" in described
    with pytest.raises(subprocess.CalledProcessError) as refused:
        _grpcurl(stack.gateway_address, "list")
    assert "Unauthenticated" in refused.value.stderr and "authorization" in refused.value.stderr


def _with_the_gateways_certificate(stack: Stack, service: str) -> tuple[str, ...]:
    """grpcurl's transport for an internal service: mutual TLS with the internal CA and the gateway's
    certificate, checking the service's name."""
    assert stack.certificates is not None
    gateway = stack.certificates.issued["gateway"]
    return (
        "-cacert", str(stack.certificates.ca_file),
        "-cert", str(gateway.certificate_file),
        "-key", str(gateway.key_file),
        "-servername", service,
    )  # fmt: skip


@pytest.mark.parametrize("service", ["gateway", "content", "media"])
def test_grpcurl_health_check_reports_serving(stack: Stack, service: str) -> None:
    address = {
        "gateway": stack.gateway_address,
        "content": stack.content_address,
        "media": stack.media_address,
    }
    # grpcurl reads the schema by reflection, which the gateway serves to callers with a key; health itself
    # is open there, as load balancers probe it without credentials. The internal services speak mutual TLS.
    if service == "gateway":
        checked = _grpcurl(
            *_as(stack), "-d", '{"service": ""}', address[service], "grpc.health.v1.Health/Check"
        )
        with grpc.insecure_channel(address[service]) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    else:
        checked = _grpcurl(
            "-d",
            '{"service": ""}',
            address[service],
            "grpc.health.v1.Health/Check",
            transport=_with_the_gateways_certificate(stack, service),
        )
    assert json.loads(checked.stdout)["status"] == "SERVING"


@pytest.mark.parametrize("service", ["content", "media"])
def test_the_internal_ports_refuse_a_plaintext_client_and_a_tls_client_without_a_certificate(
    stack: Stack, service: str
) -> None:
    """Property: only a client with a certificate from the internal CA gets an answer from content or media:
    plain text, TLS without a client certificate, and a certificate from another CA are all refused."""
    assert stack.certificates is not None
    address = stack.content_address if service == "content" else stack.media_address
    probe = ("-d", '{"service": ""}', address, "grpc.health.v1.Health/Check")
    # A refused handshake is retried until grpcurl's connect timeout (10 s by default): a refusal shows
    # within a few seconds on loopback, and the answer to the gateway's certificate below has no such limit.
    refused = ("-connect-timeout", "3", *probe)
    with pytest.raises(subprocess.CalledProcessError):
        _grpcurl(*refused, timeout_seconds=30)
    anonymous = ("-cacert", str(stack.certificates.ca_file), "-servername", service)
    with pytest.raises(subprocess.CalledProcessError):
        _grpcurl(*refused, timeout_seconds=30, transport=anonymous)
    stranger = make_internal_certificates(stack.var_root / "stranger-certs").issued["gateway"]
    impostor = (*anonymous, "-cert", str(stranger.certificate_file), "-key", str(stranger.key_file))
    with pytest.raises(subprocess.CalledProcessError):
        _grpcurl(*refused, timeout_seconds=30, transport=impostor)
    assert json.loads(_grpcurl(*probe, transport=_with_the_gateways_certificate(stack, service)).stdout)


@pytest.mark.parametrize(("service", "sibling"), [("content", "media"), ("media", "content")])
async def test_the_internal_services_answer_the_gateway_but_refuse_a_sibling_services_certificate(
    stack: Stack, service: str, sibling: str
) -> None:
    """Property: as the processes start, content and media check the caller's certificate past the CA: the
    gateway's is served, a sibling's (signed by the same CA) is PERMISSION_DENIED, and health answers both."""
    assert stack.certificates is not None
    issued = stack.certificates.issued[sibling]
    tls = InternalTls(stack.certificates.ca_file, issued.certificate_file, issued.key_file)

    async def provider_status(channel: grpc.aio.Channel) -> object:
        if service == "content":
            stub = content_grpc.ContentServiceStub(channel)
            return await stub.GetProviderStatus(content_pb.GetProviderStatusRequest(), timeout=10)
        media = media_grpc.MediaServiceStub(channel)
        return await media.GetProviderStatus(media_pb.GetProviderStatusRequest(), timeout=10)

    async with stack.internal_channel(service) as gateway:
        assert await provider_status(gateway)
    options = [("grpc.ssl_target_name_override", service)]
    async with grpc.aio.secure_channel(
        stack.addresses[service], internal_channel_credentials(tls), options=options
    ) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await provider_status(channel)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_grpcurl_runs_a_meditation_to_completion(stack: Stack) -> None:
    conversation = json.dumps(
        {
            "title": "grpcurl",
            "messages": [
                {
                    "role": "MESSAGE_ROLE_USER",
                    "text": "My garden is the one place I breathe easily; I want that calm at work too.",
                }
            ],
        }
    )
    created = _grpcurl(
        *_as(stack),
        "-d",
        conversation,
        stack.gateway_address,
        "stillpoint.gateway.v1.GatewayService/CreateConversation",
    )
    name = json.loads(created.stdout)["conversation"]["name"]
    streamed = _grpcurl(
        *_as(stack),
        "-d",
        json.dumps({"conversation": name}),
        stack.gateway_address,
        "stillpoint.gateway.v1.GatewayService/GenerateMeditation",
        timeout_seconds=300,
    ).stdout
    decoder = json.JSONDecoder()
    events: list[dict[str, object]] = []
    position = 0
    while position < len(streamed):
        if streamed[position].isspace():
            position += 1
            continue
        event, position = decoder.raw_decode(streamed, position)
        events.append(event)
    assert "accepted" in events[0]
    completed = events[-1]["completed"]
    assert isinstance(completed, dict) and completed["state"] == "MEDITATION_STATE_SUCCEEDED"
    assert sum("video_ready" in event for event in events) == 2, events[-3:]


def test_sigterm_stops_every_service_gracefully(tmp_path: Path) -> None:
    # With /metrics on: its HTTP server and gRPC's metrics plugin must not keep a process from exiting.
    with running_stack(tmp_path / "var", metrics=True) as started:
        log_dir = started.log_dir
    # Leaving running_stack sent SIGTERM: each service went NOT_SERVING, drained, and released its resources.
    for name in ("content", "media", "gateway"):
        text = (log_dir / f"{name}.log").read_text()
        assert "stopping: NOT_SERVING" in text, text[-500:]
        assert text.rstrip().endswith("stopped"), text[-500:]
        # Exited by itself, not killed at the end of running_stack's patience.
        assert started.processes[name].returncode == 0, text[-500:]


def test_stillpoint_cli_saves_both_videos_and_watch_resumes_after_a_sequence(
    stack: Stack, tmp_path: Path
) -> None:
    command = [str(Path(sys.executable).parent / "stillpoint"), "--gateway", stack.gateway_address]
    # The CLI reads its credential from the environment, as the README says.
    environment = {**os.environ, "STILLPOINT_API_KEY": stack.api_key}
    out_dir = tmp_path / "out"
    generated = subprocess.run(
        [*command, "--out", str(out_dir), "generate", "--conversation", str(EXAMPLE)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    accepted = re.search(r"accepted (meditations/([0-9a-f]{16}))", generated)
    assert accepted is not None, generated
    meditation, meditation_id = accepted.groups()
    assert sorted(path.name for path in out_dir.glob("*.mp4")) == [
        f"{meditation_id}-enhanced.mp4",
        f"{meditation_id}-quick.mp4",
    ]
    assert "completed: succeeded" in generated
    watched = subprocess.run(
        [*command, "--out", str(tmp_path / "again"), "watch", meditation, "--after", "20"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    replayed = [int(number) for number in re.findall(r"\] #(\d+) ", watched)]
    total = max(int(number) for number in re.findall(r"\] #(\d+) ", generated))
    assert replayed == list(range(21, total + 1))


def _non_loopback_address() -> str | None:
    """This machine's address on its first non-loopback interface, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_the_internal_services_refuse_connections_from_other_interfaces(stack: Stack) -> None:
    """Property: content and media listen on loopback by default: on the machine's network address their
    ports are closed, while the gateway (public) answers there."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no network interface but loopback")
    for internal in (stack.content_address, stack.media_address):
        port = int(internal.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError), socket.create_connection((address, port), timeout=5):
            pass
    gateway_port = int(stack.gateway_address.rsplit(":", 1)[1])
    with socket.create_connection((address, gateway_port), timeout=5):
        pass
