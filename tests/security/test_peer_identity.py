"""The internal services answer only the callers their certificates name, past the CA check of mutual TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services import serving
from services.certificates import InternalCertificates, make_internal_certificates
from services.environment import ConfigError, Environment
from services.peer_identity import NO_CERTIFICATE, NOT_ALLOWED, PeerIdentityInterceptor
from services.storage.local import LocalAssetStorage
from services.tls import DEFAULT_INTERNAL_CALLERS, InternalTls, read_internal_callers
from stillpoint.content.v2 import content_service_pb2 as content_pb
from stillpoint.content.v2 import content_service_pb2_grpc as content_grpc
from tests.conftest import CONTENT_SERVICE, start_content_server


@dataclass(frozen=True)
class GuardedContent:
    """A running content server with mutual TLS, and the CA whose certificates its callers present."""

    port: int
    certificates: InternalCertificates

    def channel_as(self, tls: InternalTls) -> grpc.aio.Channel:
        """A channel that presents `tls`'s certificate and trusts `tls`'s CA."""
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}",
            serving.internal_channel_credentials(tls),
            options=[("grpc.ssl_target_name_override", "content")],
        )

    def channel_of(self, service: str) -> grpc.aio.Channel:
        """A channel that presents the certificate the internal CA issued to `service`."""
        return self.channel_as(_tls(self.certificates, service))


def _tls(certificates: InternalCertificates, service: str) -> InternalTls:
    issued = certificates.issued[service]
    return InternalTls(certificates.ca_file, issued.certificate_file, issued.key_file)


@pytest.fixture
def allowed_callers() -> frozenset[str]:
    """Whom the content server answers: the default, unless a test parametrizes this."""
    return DEFAULT_INTERNAL_CALLERS


@pytest.fixture
async def content(
    tmp_path: Path,
    storage: LocalAssetStorage,
    painters: ProcessPoolExecutor,
    allowed_callers: frozenset[str],
) -> AsyncIterator[GuardedContent]:
    """A real content server as `__main__` starts it with mutual TLS: its own certificate, the internal CA,
    and the identity check with `allowed_callers`."""
    certificates = make_internal_certificates(tmp_path / "certs")
    running, engine = await start_content_server(
        tmp_path,
        storage,
        painters,
        credentials=serving.internal_server_credentials(_tls(certificates, "content")),
        interceptors=[PeerIdentityInterceptor(allowed_callers)],
    )
    yield GuardedContent(running.port, certificates)
    await running.stop(0)
    await engine.dispose()


async def _status(
    call: Callable[[], Awaitable[object] | AsyncIterable[object]],
) -> tuple[grpc.StatusCode, str]:
    """The status and message a call ends with: OK when it answered (a stream read to its end)."""
    try:
        answer = call()
        if isinstance(answer, AsyncIterable):
            async for _ in answer:
                pass
        else:
            await answer
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def _listed_services(channel: grpc.aio.Channel) -> set[str]:
    """The services the server names through reflection (a bidirectional stream)."""
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    return {service.name for service in response.list_services_response.service}


_SOURCE = content_pb.GenerateTranscriptRequest(source_text="I breathe easily in my garden.")


async def test_the_gateways_certificate_is_served_on_every_kind_of_call(content: GuardedContent) -> None:
    async with content.channel_of("gateway") as channel:
        stub = content_grpc.ContentServiceStub(channel)
        stats = await stub.GetCacheStats(content_pb.GetCacheStatsRequest(), timeout=10)
        assert {cache.name for cache in stats.caches} == {"transcripts", "images"}
        events = [event async for event in stub.GenerateTranscript(_SOURCE, timeout=30)]
        assert events[-1].HasField("completed")
        assert CONTENT_SERVICE in await _listed_services(channel)


async def test_a_sibling_services_certificate_is_refused_with_permission_denied(
    content: GuardedContent,
) -> None:
    """Property: media's certificate, signed by the same CA, passes the handshake but reaches no handler of
    content: unary, server-streaming and bidirectional calls all end with PERMISSION_DENIED."""
    async with content.channel_of("media") as channel:
        stub = content_grpc.ContentServiceStub(channel)
        calls: list[Callable[[], Awaitable[object] | AsyncIterable[object]]] = [
            lambda: stub.GetCacheStats(content_pb.GetCacheStatsRequest(), timeout=10),
            lambda: stub.GenerateTranscript(_SOURCE, timeout=10),
            lambda: _listed_services(channel),
        ]
        for call in calls:
            assert await _status(call) == (grpc.StatusCode.PERMISSION_DENIED, NOT_ALLOWED)
    async with content.channel_of("gateway") as channel:
        stats = await content_grpc.ContentServiceStub(channel).GetCacheStats(
            content_pb.GetCacheStatsRequest(), timeout=10
        )
    # The refused GenerateTranscript never reached the generator, not even its cache.
    assert all(cache.hits == cache.misses == 0 for cache in stats.caches)


@pytest.mark.parametrize("service", ["gateway", "content", "media"])
async def test_health_stays_open_to_every_certificate_the_ca_signed(
    content: GuardedContent, service: str
) -> None:
    """Each container probes its own health with its own certificate, so health answers every one."""
    async with content.channel_of(service) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=CONTENT_SERVICE), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
    content: GuardedContent, tmp_path: Path
) -> None:
    """Even one that names the gateway: only the internal CA's signature gets a caller to the name check,
    and not even health answers a stranger."""
    stranger = make_internal_certificates(tmp_path / "stranger-certs").issued["gateway"]
    impostor = InternalTls(content.certificates.ca_file, stranger.certificate_file, stranger.key_file)
    async with content.channel_as(impostor) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = content_grpc.ContentServiceStub(channel)
        refusals = [
            await _status(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10)),
            await _status(lambda: stub.GetCacheStats(content_pb.GetCacheStatsRequest(), timeout=10)),
        ]
    assert [code for code, _ in refusals] == [grpc.StatusCode.UNAVAILABLE] * 2


@pytest.mark.parametrize("allowed_callers", [frozenset({"media"})])
async def test_a_caller_is_allowed_by_a_subject_alternative_name_as_well_as_its_common_name(
    content: GuardedContent,
) -> None:
    """`media` is the DNS name in media's certificate (its common name is stillpoint-media): listing it lets
    media in, and the gateway, no longer listed, is refused."""
    async with content.channel_of("media") as media, content.channel_of("gateway") as gateway:
        request = content_pb.GetCacheStatsRequest()
        assert await _status(lambda: content_grpc.ContentServiceStub(media).GetCacheStats(request)) == (
            grpc.StatusCode.OK,
            "",
        )
        refused = await _status(lambda: content_grpc.ContentServiceStub(gateway).GetCacheStats(request))
    assert refused[0] == grpc.StatusCode.PERMISSION_DENIED


async def test_a_caller_without_a_certificate_is_unauthenticated(
    tmp_path: Path, storage: LocalAssetStorage, painters: ProcessPoolExecutor
) -> None:
    """Installed on a port that does not ask for certificates (a mistake: `__main__` installs it only with
    mutual TLS), the check refuses every call rather than letting an anonymous caller through."""
    running, engine = await start_content_server(
        tmp_path, storage, painters, interceptors=[PeerIdentityInterceptor(DEFAULT_INTERNAL_CALLERS)]
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = content_grpc.ContentServiceStub(channel)
            refused = await _status(lambda: stub.GetCacheStats(content_pb.GetCacheStatsRequest(), timeout=10))
    finally:
        await running.stop(0)
        await engine.dispose()
    assert refused == (grpc.StatusCode.UNAUTHENTICATED, NO_CERTIFICATE)


async def test_a_stream_behind_the_check_cut_by_the_grace_period_runs_its_cleanup_before_stop_returns(
    tmp_path: Path,
) -> None:
    """The check wraps each handler; the wrapped stream still cleans up when the server cuts it."""
    certificates = make_internal_certificates(tmp_path / "certs")
    cleaned_up = asyncio.Event()

    async def endless(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(0.05)
        finally:
            # Cleanup that awaits, as killing FFmpeg or removing scratch files does.
            await asyncio.sleep(0.2)
            await asyncio.to_thread(cleaned_up.set)

    def register(server: grpc.aio.Server) -> None:
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_stream_rpc_method_handler(endless)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("example.v1.ExampleService", {"Tick": handler}),)
        )

    running = await serving.start_server(
        service_names=["example.v1.ExampleService"],
        register=register,
        address="127.0.0.1:0",
        credentials=serving.internal_server_credentials(_tls(certificates, "content")),
        interceptors=[PeerIdentityInterceptor(DEFAULT_INTERNAL_CALLERS)],
    )
    async with GuardedContent(running.port, certificates).channel_of("gateway") as channel:
        tick: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            "/example.v1.ExampleService/Tick"
        )
        stream = tick(b"")
        assert await stream.read() == b"tick"
        await running.stop(grace_seconds=0.1)
        assert cleaned_up.is_set()
        stream.cancel()


def test_allowed_callers_default_to_the_gateway_and_are_read_from_the_environment(tmp_path: Path) -> None:
    tls = _tls(make_internal_certificates(tmp_path / "certs"), "content")
    assert read_internal_callers(Environment({}), tls) == frozenset({"stillpoint-gateway"})
    assert read_internal_callers(Environment({}), None) == DEFAULT_INTERNAL_CALLERS
    listed = Environment({"STILLPOINT_INTERNAL_ALLOWED_CALLERS": " stillpoint-gateway, ops-console ,"})
    assert read_internal_callers(listed, tls) == frozenset({"stillpoint-gateway", "ops-console"})


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (",", "names no caller"),
        ("stillpoint-*", "no wildcards"),
        ("stillpoint-gateway,localhost", "a host rather than a caller"),
        ("127.0.0.1", "a host rather than a caller"),
        ("::1", "a host rather than a caller"),
    ],
)
def test_allowed_callers_that_would_let_anyone_in_fail_fast(
    tmp_path: Path, value: str, complaint: str
) -> None:
    tls = _tls(make_internal_certificates(tmp_path / "certs"), "content")
    with pytest.raises(ConfigError, match=f"STILLPOINT_INTERNAL_ALLOWED_CALLERS.*{complaint}"):
        read_internal_callers(Environment({"STILLPOINT_INTERNAL_ALLOWED_CALLERS": value}), tls)


def test_allowed_callers_without_mutual_tls_fail_fast() -> None:
    """Without certificates the port is plaintext: a list of callers there is a check that never runs."""
    environment = Environment({"STILLPOINT_INTERNAL_ALLOWED_CALLERS": "stillpoint-gateway"})
    with pytest.raises(ConfigError, match="STILLPOINT_INTERNAL_ALLOWED_CALLERS needs mutual TLS"):
        read_internal_callers(environment, None)
