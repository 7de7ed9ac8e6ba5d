"""A TCP proxy for fault tests: it sits between a service and what it depends on, and can delay, cut or
refuse their connections on command, as a network, a load balancer or a restarting server would.

No maintained proxy of this kind installs from a package registry (Toxiproxy is a Go binary), so this is a
small asyncio one. It runs its own event loop on a thread, so a test can command it from any thread or loop.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

_CHUNK_BYTES = 64 * 1024
T = TypeVar("T")


@dataclass
class _Faults:
    """What the proxy does to traffic now."""

    # New connections are reset on arrival (a server that is down behind a load balancer).
    is_refusing: bool = False
    # Every chunk, in either direction, waits this long before it is forwarded (a congested link).
    delay_seconds: float = 0.0
    # A connection that has carried this many bytes from the client is reset there (an upload cut
    # half-way); 0: never.
    cut_after_client_bytes: int = 0


class FaultyTcpProxy:
    """Forwards 127.0.0.1:`port` to `upstream_host`:`upstream_port` until told otherwise."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._faults = _Faults()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.connections_refused = 0
        self.connections_cut = 0
        self.port = 0

    def start(self) -> int:
        """Listens on a free port of 127.0.0.1 and returns it."""
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def stop(self) -> None:
        """Closes the listener and every connection, then the proxy's loop."""
        if self._server is not None:
            self._call(self._shut_down(self._server))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _shut_down(self, server: asyncio.Server) -> None:
        # On the proxy's loop: an asyncio server is not safe to close from another thread.
        server.close()
        for writer in list(self._open):
            _reset(writer)
        await server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refuse(self) -> None:
        """Resets every open connection, and every new one on arrival, until `heal`."""
        self._faults.is_refusing = True
        self.cut()

    def delay(self, seconds: float) -> None:
        """Holds every chunk for `seconds` before forwarding it, until `heal`."""
        self._faults.delay_seconds = seconds

    def cut_uploads_after(self, client_bytes: int) -> None:
        """Resets each connection once it has carried `client_bytes` from the client, until `heal`."""
        self._faults.cut_after_client_bytes = client_bytes

    def heal(self) -> None:
        """Forwards everything again, at once."""
        self._faults = _Faults()

    def cut(self) -> None:
        """Resets every open connection now (new ones are forwarded unless refusing)."""

        def reset_all() -> None:
            for writer in list(self._open):
                self.connections_cut += 1
                _reset(writer)

        self._loop.call_soon_threadsafe(reset_all)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._faults.is_refusing:
            self.connections_refused += 1
            _reset(client_writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            _reset(client_writer)
            return
        self._open.update((client_writer, upstream_writer))
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer, client_writer, counts_client_bytes=True),
                self._pipe(upstream_reader, client_writer, upstream_writer, counts_client_bytes=False),
            )
        finally:
            self._open.difference_update((client_writer, upstream_writer))
            for writer in (client_writer, upstream_writer):
                writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        source: asyncio.StreamWriter,
        *,
        counts_client_bytes: bool,
    ) -> None:
        carried = 0
        try:
            while chunk := await reader.read(_CHUNK_BYTES):
                faults = self._faults
                if faults.delay_seconds:
                    await asyncio.sleep(faults.delay_seconds)  # the injected delay itself
                limit = faults.cut_after_client_bytes if counts_client_bytes else 0
                if limit and carried + len(chunk) > limit:
                    writer.write(chunk[: limit - carried])
                    self.connections_cut += 1
                    _reset(source)
                    _reset(writer)
                    return
                carried += len(chunk)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if writer.can_write_eof() and not writer.is_closing():
                with suppress(ConnectionError, OSError):
                    writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Closes with a TCP reset (SO_LINGER 0), as a crashed peer or a refusing balancer does: no clean FIN."""
    raw = writer.get_extra_info("socket")
    if raw is not None:
        with suppress(OSError):
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextmanager
def faulty_proxy(upstream_host: str, upstream_port: int) -> Iterator[FaultyTcpProxy]:
    """A started proxy to the upstream, stopped on the way out."""
    proxy = FaultyTcpProxy(upstream_host, upstream_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
