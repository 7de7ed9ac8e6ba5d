"""The HTTP server the fake provider servers share: threaded, IPv4 or IPv6, stops despite hung handlers."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

StateT = TypeVar("StateT")


class TrackingHTTPServer(ThreadingHTTPServer, Generic[StateT]):
    """Serves each request on a daemon thread, holds the fake's `state`, and tracks open connections so
    stopping never waits on a handler blocked in a keep-alive read, a slow write or an injected hang."""

    daemon_threads = True
    # Hung handlers must never hold up server_close().
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], state: StateT
    ) -> None:
        self.state = state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def track(self, connection: socket.socket, is_open: bool) -> None:
        """Records a connection opening or closing (called from the handler's setup and finish)."""
        with self._connections_lock:
            if is_open:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Prints a handler's error, as socketserver does, unless the client had hung up before its answer
        was written (it timed out, or gave up on a refusal): that is the client's doing, not the fake's
        failure, and its traceback in a test run's output only hid real ones."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Shuts every open connection so handler threads blocked on it end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class TrackingHandler(BaseHTTPRequestHandler):
    """A handler that registers its connection with the TrackingHTTPServer and sends every method to
    `_dispatch(method)`; quiet, because the fakes keep a request log instead."""

    protocol_version = "HTTP/1.1"
    # A real provider's answer is not held back by Nagle's algorithm; with it on, http.server sends the
    # headers and then holds the body until the client's delayed acknowledgement, about 40 ms a request
    # that no latency model asked for.
    disable_nagle_algorithm = True
    server: TrackingHTTPServer[Any]

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, is_open=True)

    def finish(self) -> None:
        self.server.track(self.connection, is_open=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read the request log instead."""

    def _dispatch(self, method: str) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")
