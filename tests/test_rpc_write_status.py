"""A streaming call its server ends while the client is still writing reports the server's status, as the
server sent it: the gateway learns why media failed a live narration, not grpc.aio's INTERNAL
(services/rpc_write_status.py, grpc/grpc#36066)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc._cython import cygrpc
from grpc.aio import _call

from services import rpc_write_status, serving
from services.gateway.backends import MediaClient, open_backend_channel
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.pipeline import StageTimeouts
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc
from tests.conftest import MEDIA_SERVICE

REFUSAL = "the voice refused this script"
# Without the mend, about five calls in seven of these reported INTERNAL: a few dozen make a miss certain.
CALLS = 40
SENTENCES = 50


_Context = grpc.aio.ServicerContext[media_pb.NarrateLiveRequest, media_pb.NarrateLiveResponse]
_Handler = Callable[
    [AsyncIterator[media_pb.NarrateLiveRequest], _Context], AsyncIterator[media_pb.NarrateLiveResponse]
]


async def _refusing(
    requests: AsyncIterator[media_pb.NarrateLiveRequest], context: _Context
) -> AsyncIterator[media_pb.NarrateLiveResponse]:
    """Ends the live narration after its first message, while the gateway is still sending sentences."""
    await anext(aiter(requests))
    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, REFUSAL)
    yield media_pb.NarrateLiveResponse()  # never reached: makes this a streaming handler


async def _silent(
    requests: AsyncIterator[media_pb.NarrateLiveRequest], context: _Context
) -> AsyncIterator[media_pb.NarrateLiveResponse]:
    """Reads nothing and ends nothing."""
    await asyncio.Event().wait()
    yield media_pb.NarrateLiveResponse()


async def _media_answering_with(handler: _Handler) -> serving.RunningServer:
    """A media server whose NarrateLive is `handler`, started as every service is."""

    def register(server: grpc.aio.Server) -> None:
        method = grpc.stream_stream_rpc_method_handler(
            handler,
            request_deserializer=media_pb.NarrateLiveRequest.FromString,
            response_serializer=media_pb.NarrateLiveResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(MEDIA_SERVICE, {"NarrateLive": method}),)
        )

    return await serving.start_server(service_names=[MEDIA_SERVICE], register=register, address="127.0.0.1:0")


async def _script() -> AsyncIterator[str]:
    for index in range(SENTENCES):
        yield f"Breathe in, and count to {index}."


async def test_the_gateway_reads_the_status_media_ended_a_live_narration_with() -> None:
    running = await _media_answering_with(_refusing)
    try:
        # The gateway's own channel to media: its tracing interceptors, its retry policy.
        async with open_backend_channel(f"127.0.0.1:{running.port}", "media", None) as channel:
            media = MediaClient(channel, StageTimeouts())
            seen = []
            for _ in range(CALLS):
                with pytest.raises(GatewayError) as failed:
                    async for _event in media.narrate_live("meditations/m-1", "owner-1", _script()):
                        pass
                seen.append((failed.value.kind, failed.value.message))
    finally:
        await running.server.stop(0)
    assert seen == [(FailureKind.PRECONDITION, REFUSAL)] * CALLS


class _RefusingSends:
    """A call's Core half whose sends Core refuses at once, for a reason that ends nothing (a second send
    while one is in flight, grpc/grpc#34148), so that no status comes; the rest is the real call's."""

    def __init__(self, call: object) -> None:
        self._call = call

    async def send_serialized_message(self, message: bytes) -> None:
        raise cygrpc.ExecuteBatchError("Failed grpc_call_start_batch: 8")

    def __getattr__(self, name: str) -> object:
        return getattr(self._call, name)


async def test_a_write_refused_while_the_call_goes_on_ends_it_as_internal_rather_than_hanging() -> None:
    running = await _media_answering_with(_silent)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            call: Any = media_grpc.MediaServiceStub(channel).NarrateLive(timeout=60)
            call._cython_call = _RefusingSends(call._cython_call)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                # Far under the call's deadline, which a refused write without a status waited for.
                async with asyncio.timeout(10 * rpc_write_status.STATUS_GRACE_SECONDS):
                    await call.write(media_pb.NarrateLiveRequest(text=media_pb.NarrateLiveText(text="Rest.")))
            call.cancel()
    finally:
        await running.server.stop(0)
    assert refused.value.code() == grpc.StatusCode.INTERNAL


def test_another_grpcs_write_is_left_alone_and_that_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def another_write(self: object, request: object) -> None:
        """A grpc whose write is not the one rpc_write_status replaces."""

    monkeypatch.setattr(_call._StreamRequestMixin, "_write", another_write)
    with caplog.at_level(logging.WARNING, logger=rpc_write_status.__name__):
        assert not rpc_write_status.keep_server_status()
    assert _call._StreamRequestMixin._write is another_write
    assert "grpc/grpc#36066" in caplog.text


def test_grpcs_own_write_is_replaced_and_only_once() -> None:
    assert rpc_write_status.keep_server_status()
    assert _call._StreamRequestMixin._write is rpc_write_status._write
    assert rpc_write_status.keep_server_status()
    assert _call._StreamRequestMixin._write is rpc_write_status._write


def test_a_grpc_without_its_source_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def compiled_write(self: object, request: object) -> None:
        """A write whose source cannot be read (grpc installed without its .py files)."""

    def no_source(_: object) -> str:
        raise OSError("could not get source code")

    monkeypatch.setattr(_call._StreamRequestMixin, "_write", compiled_write)
    monkeypatch.setattr(inspect, "getsource", no_source)
    with caplog.at_level(logging.WARNING, logger=rpc_write_status.__name__):
        assert not rpc_write_status.keep_server_status()
    assert _call._StreamRequestMixin._write is compiled_write
    assert "grpc/grpc#36066" in caplog.text
