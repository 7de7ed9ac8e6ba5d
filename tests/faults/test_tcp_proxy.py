"""The fault tests' TCP proxy does what they rely on: forward, delay, refuse, cut mid-upload, heal."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.faults.tcp_proxy import FaultyTcpProxy, faulty_proxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        # The proxy cuts connections on purpose (the faults under test): a reset ends the echo as a close
        # does, rather than printing a traceback from the server's thread into the test run's output.
        with contextlib.suppress(ConnectionResetError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[FaultyTcpProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with faulty_proxy("127.0.0.1", server.server_address[1]) as started:
            yield started
    finally:
        server.shutdown()
        server.server_close()


def _round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_it_forwards_delays_and_heals(proxy: FaultyTcpProxy) -> None:
    assert _round_trip(proxy.port, b"hello") == b"hello"
    proxy.delay(0.3)
    started = time.monotonic()
    assert _round_trip(proxy.port, b"slow") == b"slow"
    # Held once on the way there and once on the way back.
    assert time.monotonic() - started >= 0.6
    proxy.heal()
    assert _round_trip(proxy.port, b"again") == b"again"


def test_refusing_resets_new_connections_until_healed(proxy: FaultyTcpProxy) -> None:
    proxy.refuse()
    with pytest.raises(ConnectionError):
        _round_trip(proxy.port, b"anyone there?")
    assert proxy.connections_refused == 1
    proxy.heal()
    assert _round_trip(proxy.port, b"back") == b"back"


def _echoed_or_cut(port: int, payload: bytes) -> bytes | None:
    """What came back, or None when the connection was reset."""
    try:
        return _round_trip(port, payload)
    except ConnectionError:
        return None


def test_an_upload_is_cut_after_the_given_bytes(proxy: FaultyTcpProxy) -> None:
    proxy.cut_uploads_after(1000)
    echoed = _echoed_or_cut(proxy.port, b"x" * 4000)
    # Never the whole upload: at most what passed before the cut, then a reset.
    assert echoed is None or len(echoed) <= 1000
    assert proxy.connections_cut == 1
    proxy.heal()
    assert _round_trip(proxy.port, b"y" * 4000) == b"y" * 4000


def test_cut_resets_connections_already_open(proxy: FaultyTcpProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as connection:
        connection.sendall(b"ping")
        assert connection.recv(4) == b"ping"
        proxy.cut()
        deadline = time.monotonic() + 5
        while proxy.connections_cut < 2:  # both sides of the one connection
            assert time.monotonic() < deadline
            time.sleep(0.02)  # polling the proxy, with a deadline
        try:
            connection.sendall(b"ping")
            answer = connection.recv(4)
        except ConnectionError:
            answer = b""
        assert answer == b""
