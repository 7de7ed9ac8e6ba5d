"""gRPC's completions reach a busy event loop as they come: the wake-up socket between grpc.aio's poller
thread and the loop never fills, so the poller never blocks handing the loop one completion per turn."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import grpc

from services import rpc_wakeups, serving

SERVICE = "stillpoint.test.v1.Wakeups"
STREAMS = 50
MESSAGES_PER_STREAM = 60
# Each turn of the busy loop does this much work first, as a loop relaying fifty jobs does.
BUSY_TURN_SECONDS = 0.001


async def _count(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    received = 0
    async for _ in requests:
        received += 1
    return str(received).encode()


def _register(server: grpc.aio.Server) -> None:
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.stream_unary_rpc_method_handler(_count)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Count": handler}),))


def _draining_readers(loop: asyncio.AbstractEventLoop) -> list[object]:
    selector = getattr(loop, "_selector")  # noqa: B009 - the loop's readers, as drain_wakeups finds them
    return [
        key.data[0]._callback
        for key in selector.get_map().values()
        if key.data[0] is not None and isinstance(key.data[0]._callback, rpc_wakeups._DrainingReader)
    ]


async def test_every_server_drains_grpcs_wake_up_socket() -> None:
    running = await serving.start_server(service_names=[SERVICE], register=_register, address="127.0.0.1:0")
    try:
        loop = asyncio.get_running_loop()
        # In front of grpc.aio's own reader (a grpc that registers it otherwise fails here), and only once.
        assert len(_draining_readers(loop)) == 1
        assert rpc_wakeups.drain_wakeups(loop)
        assert len(_draining_readers(loop)) == 1
    finally:
        await running.server.stop(0)


def test_the_reader_leaves_grpc_exactly_the_one_byte_it_reads() -> None:
    loop_end, poller_end = socket.socketpair()
    seen: list[int] = []

    def grpc_reader() -> None:
        seen.append(rpc_wakeups.waiting_bytes(loop_end))
        loop_end.recv(1)  # what grpc.aio's reader does, on a blocking socket

    loop_end.settimeout(2)  # a read that would block fails the test instead of hanging it
    try:
        poller_end.sendall(b"1" * 300)
        reader = rpc_wakeups._DrainingReader(loop_end, grpc_reader)
        reader()
        assert seen == [1]
        assert rpc_wakeups.waiting_bytes(loop_end) == 0
        poller_end.sendall(b"1")
        reader()
        assert seen == [1, 1]
        # Woken with nothing waiting (grpc's reader would block the loop reading): it is not called.
        reader()
        assert seen == [1, 1]
    finally:
        loop_end.close()
        poller_end.close()


async def test_fifty_streams_reach_a_busy_loop_without_one_turn_per_message() -> None:
    """With grpc.aio's reader alone the socket fills within a few hundred completions, and from then on
    the loop is handed one completion per turn: these messages took 6308 turns of the loop (6.3 s). Drained,
    the completions that came during a turn all run in the next: 356 turns (0.4 s)."""
    running = await serving.start_server(service_names=[SERVICE], register=_register, address="127.0.0.1:0")
    loop = asyncio.get_running_loop()
    turns = 0
    is_busy = True

    def busy_turn() -> None:
        nonlocal turns
        turns += 1
        until = time.perf_counter() + BUSY_TURN_SECONDS
        while time.perf_counter() < until:
            pass  # work, not waiting: the loop is busy for the whole of it
        if is_busy:
            loop.call_soon(busy_turn)

    async def messages() -> AsyncIterator[bytes]:
        for _ in range(MESSAGES_PER_STREAM):
            yield b"a sentence of the script" * 4

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            count: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(f"/{SERVICE}/Count")
            loop.call_soon(busy_turn)
            answers = await asyncio.wait_for(
                asyncio.gather(*(count(messages()) for _ in range(STREAMS))), timeout=120
            )
    finally:
        is_busy = False
        await running.server.stop(0)
    assert answers == [str(MESSAGES_PER_STREAM).encode()] * STREAMS
    total = STREAMS * MESSAGES_PER_STREAM
    # Each message is at least two completions (sent, received): one a turn would be 2 × total turns.
    assert turns < total / 2, f"{turns} turns of the loop for {total} messages"


def test_a_loop_without_grpcs_reader_is_left_as_it_is() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert not rpc_wakeups.drain_wakeups(loop)
        assert _draining_readers(loop) == []
    finally:
        loop.close()
