"""The shared server frame: health, reflection, graceful stop, and a loop that stays free while work runs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiosqlite
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from services import serving
from services.media.speech import EspeakNarrator, encode_wav
from services.storage.local import LocalAssetStorage
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc
from tests.conftest import MEDIA_SERVICE

# Made-up keys in the providers' formats, built here so that no key-like text is committed.
LEAKED_OPENAI_KEY = "sk-" + "proj-Leak0123456789"
LEAKED_SUPABASE_KEY = "sb_" + "secret_Leak0123456789"


async def _start_bare() -> serving.RunningServer:
    return await serving.start_server(
        service_names=["example.v1.ExampleService"], register=lambda _: None, address="127.0.0.1:0"
    )


async def test_health_is_serving_after_start_and_not_serving_on_stop() -> None:
    running = await _start_bare()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "example.v1.ExampleService"):
            response = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await anext(aiter(watch))).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(running.stop(grace_seconds=5))
        assert (await anext(aiter(watch))).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        await stopping


async def test_a_stream_cut_by_the_end_of_the_grace_period_runs_its_cleanup_before_stop_returns() -> None:
    cleaned_up = asyncio.Event()

    async def endless(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"tick"
                # A stream that never ends on its own, ticking at a modest pace.
                await asyncio.sleep(0.05)
        finally:
            # Cleanup that awaits (a subprocess to exit, files to go), cancelled once already.
            await asyncio.sleep(0.2)
            await asyncio.to_thread(cleaned_up.set)

    running = await _start_streaming(endless)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stream = _streaming_call(channel)(b"")
        assert await stream.read() == b"tick"
        await running.stop(grace_seconds=0.1)
        assert cleaned_up.is_set()
        assert await _status_once_cut(stream) == grpc.StatusCode.UNAVAILABLE


async def test_a_stream_cut_while_its_response_is_being_sent_runs_its_cleanup_before_stop_returns() -> None:
    """The cut can land while the server waits to send (the client reads no more, flow control holds the
    response back): the servicer's generator is then suspended at its `yield`, outside the RPC's task."""
    cleaned_up = asyncio.Event()
    yielded = 0

    async def flood(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        nonlocal yielded
        try:
            while True:
                yielded += 1
                yield bytes(1 << 20)
        finally:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(cleaned_up.set)

    running = await _start_streaming(flood)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stream = _streaming_call(channel)(b"")
        first = await stream.read()
        assert isinstance(first, bytes) and len(first) == 1 << 20
        # The client reads nothing more: the server fills the flow-control windows and then waits to send.
        deadline = asyncio.get_running_loop().time() + 10
        previous = -1
        while yielded != previous and asyncio.get_running_loop().time() < deadline:
            previous = yielded
            await asyncio.sleep(0.3)
        assert yielded == previous, "the server never stopped to wait for the client"
        await running.stop(grace_seconds=0.1)
        assert cleaned_up.is_set()
        stream.cancel()


async def _start_streaming(
    behaviour: Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], AsyncIterator[bytes]],
) -> serving.RunningServer:
    """A server whose one method, example.v1.ExampleService/Stream, streams what `behaviour` yields."""

    def register(server: grpc.aio.Server) -> None:
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_stream_rpc_method_handler(behaviour)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("example.v1.ExampleService", {"Stream": handler}),)
        )

    return await serving.start_server(
        service_names=["example.v1.ExampleService"], register=register, address="127.0.0.1:0"
    )


def _streaming_call(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream("/example.v1.ExampleService/Stream")


async def _status_once_cut(stream: grpc.aio.UnaryStreamCall[bytes, bytes]) -> grpc.StatusCode:
    try:
        while await stream.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_reflection_lists_the_service_health_and_reflection() -> None:
    running = await _start_bare()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
        names = {service.name for service in response.list_services_response.service}
    await running.stop(0)
    assert names == {
        "example.v1.ExampleService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_health_answers_while_a_video_encodes(
    media_channel: grpc.aio.Channel, storage: LocalAssetStorage, narrator: EspeakNarrator
) -> None:
    media = media_grpc.MediaServiceStub(media_channel)
    health = health_pb2_grpc.HealthStub(media_channel)
    script = " ".join(["Breathe in, and let the breath go. [pause 4s]"] * 30)
    wav = encode_wav(await narrator.narrate(script))
    narration = await storage.put_bytes("narrations/0123456789abcdef/health.wav", wav, "audio/wav")
    picture = io.BytesIO()
    Image.new("RGB", (1792, 1024), (40, 60, 90)).save(picture, format="PNG")
    image = await storage.put_bytes("images/health.png", picture.getvalue(), "image/png")
    render = asyncio.ensure_future(
        _drain(
            media.RenderVideo(
                media_pb.RenderVideoRequest(
                    meditation="meditations/0123456789abcdef",
                    image_storage_key=image.key,
                    narration_storage_key=narration.key,
                    profile=media_pb.VIDEO_PROFILE_ENHANCED,
                )
            )
        )
    )
    answers_during_encode = 0
    while not render.done():
        response = await health.Check(health_pb2.HealthCheckRequest(service=MEDIA_SERVICE))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        if not render.done():
            answers_during_encode += 1
        # Spaces the probes; the loop ends on the render's completion, not on time.
        await asyncio.sleep(0.01)
    await render
    assert answers_during_encode >= 3


async def _drain(stream: grpc.aio.UnaryStreamCall) -> int:  # type: ignore[type-arg]
    return len([response async for response in stream])


# Names a secret goes by: *_KEY, *_TOKEN, *_SECRET, *_PASSWORD and the like (not STILLPOINT_*_MAX_TOKENS).
# A `..._KEY_FILE` variable names where a key lives (a path, which is no secret); the key itself never enters
# the environment or a log, so it has nothing to redact.
_SECRET_NAME = re.compile(r'"([A-Z][A-Z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD|PASS|CREDENTIALS?))"')
_SERVICES = Path(__file__).resolve().parents[1] / "services"


def test_every_secret_variable_the_services_read_is_registered() -> None:
    """A new secret read anywhere in services/ fails here until serving.SECRET_VARIABLES names it."""
    named = {
        match.group(1)
        for path in _SERVICES.rglob("*.py")
        for match in _SECRET_NAME.finditer(path.read_text(encoding="utf-8"))
    }
    assert {"OPENAI_API_KEY", "SUPABASE_KEY"} <= named
    assert named <= set(serving.SECRET_VARIABLES)


@pytest.mark.parametrize("service", ["content", "media"])
def test_each_service_redacts_every_registered_secret(service: str) -> None:
    main = (_SERVICES / service / "__main__.py").read_text(encoding="utf-8")
    assert "secrets=serving.registered_secrets(os.environ)" in main


def test_registered_secrets_include_keys_and_url_passwords_of_any_process() -> None:
    environment = {
        "OPENAI_API_KEY": "sk-" + "proj-Openai0123456789",
        "SUPABASE_KEY": "sb_" + "secret_Supabase0123456789",
        "DATABASE_URL": "postgresql+asyncpg://stillpoint:pg%2Fp%40ss@db:5432/stillpoint",
        "REDIS_URL": "rediss://default:r3d1s-pass@cache:6380/0",
        "STILLPOINT_LOG_LEVEL": "info",
    }
    secrets = serving.registered_secrets(environment)
    assert set(secrets) == {
        "sk-" + "proj-Openai0123456789",
        "sb_" + "secret_Supabase0123456789",
        "pg%2Fp%40ss",
        "pg/p@ss",
        "r3d1s-pass",
    }
    assert serving.registered_secrets({"REDIS_URL": "redis://cache:6379/0?password=q-pass"}) == ["q-pass"]
    assert serving.registered_secrets({"DATABASE_URL": "sqlite+aiosqlite:///var/content.db"}) == []


@pytest.fixture
def redacted_log() -> Iterator[io.StringIO]:
    """The root logger as `configure_logging` sets it up, writing to a buffer; restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers.clear()
    environment = {
        "OPENAI_API_KEY": LEAKED_OPENAI_KEY,
        "SUPABASE_KEY": LEAKED_SUPABASE_KEY,
    }
    serving.configure_logging("debug", secrets=serving.registered_secrets(environment))
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name in serving.DATA_BEARING_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_no_registered_secret_reaches_the_log_in_messages_arguments_or_tracebacks(
    redacted_log: io.StringIO,
) -> None:
    log = logging.getLogger("storage3")
    log.info("uploading with apikey=%s", LEAKED_SUPABASE_KEY)
    log.debug("headers: %s", {"Authorization": f"Bearer {LEAKED_OPENAI_KEY}"})
    try:
        raise RuntimeError(f"rejected key {LEAKED_OPENAI_KEY}")
    except RuntimeError:
        log.exception("call failed")
    written = redacted_log.getvalue()
    assert "Leak0123456789" not in written
    assert written.count("***") >= 3
    assert "call failed" in written


async def test_conversation_text_in_sqlite_statements_stays_out_of_a_debug_log(
    redacted_log: io.StringIO, tmp_path: Path
) -> None:
    """aiosqlite logs each statement's parameters at DEBUG; at debug level, the person's words stay out."""
    words = "Her scans are next Thursday and I am scared"
    async with aiosqlite.connect(tmp_path / "log.db") as database:
        await database.execute("CREATE TABLE messages (text TEXT)")
        await database.execute("INSERT INTO messages VALUES (?)", (words,))
    logging.getLogger("services.content").debug("stored a message")
    written = redacted_log.getvalue()
    assert "stored a message" in written
    assert words not in written


def test_json_logs_are_one_object_per_line_naming_the_service_and_meditation_and_never_a_secret() -> None:
    """What a log collector gets with STILLPOINT_LOG_FORMAT=json, from a process set up as a service is."""
    secret = "sk-proj-NeverLogged0123456789"
    script = f"""
import logging
from services import serving
from services.log_context import bound_meditation

from opentelemetry.sdk.trace import TracerProvider

serving.configure_logging("info", secrets=[{secret!r}], log_format="json", service="media")
log = logging.getLogger("services.media")
log.info("outside a job")
with bound_meditation("meditations/abc123"), TracerProvider().get_tracer("t").start_as_current_span("s") as s:
    log.warning("key %s was refused", {secret!r})
    print(format(s.get_span_context().trace_id, "032x"))
    try:
        raise RuntimeError("boom with " + {secret!r})
    except RuntimeError:
        log.exception("the call failed")
"""
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )

    assert secret not in ran.stderr
    trace_id = ran.stdout.strip()
    records = [json.loads(line) for line in ran.stderr.splitlines()]
    assert len(records) == 3, ran.stderr
    outside, refused, failed = records
    assert outside["message"] == "outside a job"
    assert (outside["service"], outside["level"], outside["logger"]) == ("media", "INFO", "services.media")
    assert outside["meditation"] == ""
    assert re.match(r"\d{4}-\d\d-\d\d", outside["time"])
    assert refused["message"] == "key *** was refused"
    assert refused["meditation"] == failed["meditation"] == "meditations/abc123"
    assert "RuntimeError: boom with ***" in failed["exc_info"]
    # Inside a span, a line carries its trace (to join the logs to the trace); outside, none.
    assert outside["trace_id"] == outside["span_id"] == ""
    assert refused["trace_id"] == failed["trace_id"] == trace_id
    assert len(refused["span_id"]) == 16


async def test_a_server_ends_old_connections_so_clients_reconnect_and_resolve_again_but_streams_go_on() -> (
    None
):
    """Property: past its maximum age a connection is replaced for new calls (so a client's DNS resolver looks
    again, finding new replicas), while a stream open on it runs to its end."""
    stream_ends = asyncio.Event()

    async def peer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return context.peer().encode()

    async def slow(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        for _ in range(12):
            yield context.peer().encode()
            await asyncio.sleep(0.1)
        stream_ends.set()

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "example.v1.ExampleService",
                    {
                        "Peer": grpc.unary_unary_rpc_method_handler(peer),
                        "Slow": grpc.unary_stream_rpc_method_handler(slow),
                    },
                ),
            )
        )

    running = await serving.start_server(
        service_names=["example.v1.ExampleService"],
        register=register,
        address="127.0.0.1:0",
        max_connection_age_seconds=0.3,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            ask: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/example.v1.ExampleService/Peer"
            )
            first = await ask(b"")
            # A stream that outlives the connection's age by far: it must not be cut.
            slow_call: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                "/example.v1.ExampleService/Slow"
            )
            stream = slow_call(b"")
            peers_of_stream = {message async for message in stream}
            assert stream_ends.is_set()
            assert peers_of_stream == {first}
            later = await ask(b"")
    finally:
        await running.stop(grace_seconds=1)

    # The same client, a new connection (another local port).
    assert later != first
