"""The HTTP server every fake provider shares."""

from __future__ import annotations

import http.client
import itertools
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.servers.http_base import TrackingHandler, TrackingHTTPServer
from tests.servers.openai_compatible import _AUDIO_WRITE_INTERVAL_SECONDS, _at_intervals, _spread


class _SocketOptionHandler(TrackingHandler):
    """Answers every GET with whether its own accepted socket has TCP_NODELAY set."""

    def _dispatch(self, method: str) -> None:
        no_delay = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        body = b"on" if no_delay else b"off"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[TrackingHTTPServer[None]]:
    httpd = TrackingHTTPServer(("127.0.0.1", 0), _SocketOptionHandler, None)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()


def test_answers_are_not_held_back_by_nagles_algorithm(server: TrackingHTTPServer[None]) -> None:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=5)
    try:
        connection.request("GET", "/")
        answer = connection.getresponse().read()
    finally:
        connection.close()

    assert answer == b"on"


def test_speech_is_written_at_intervals_with_the_first_piece_alone_and_the_last_on_time() -> None:
    pieces = [bytes([index]) * 4096 for index in range(80)]
    due = _spread(0.4, len(pieces))

    writes = _at_intervals(due, pieces)

    assert b"".join(data for _, data in writes) == b"".join(pieces)
    assert writes[0] == (due[0], pieces[0])
    assert writes[-1][0] == due[-1]
    later = [offset for offset, _ in writes[1:]]
    assert all(b - a >= _AUDIO_WRITE_INTERVAL_SECONDS - 1e-9 for a, b in itertools.pairwise(later))
    # 80 pieces over 0.36 s at one write per 0.04 s: about ten writes, not eighty.
    assert 5 <= len(writes) <= 12


class _FailingHandler(TrackingHandler):
    """Fails every GET as its path says: as if the client had hung up, or with a bug of the fake's own."""

    def _dispatch(self, method: str) -> None:
        if self.path == "/hung-up":
            raise BrokenPipeError(32, "Broken pipe")
        raise ValueError("a bug in the fake")


def test_a_client_that_hung_up_leaves_no_traceback_and_a_bug_in_the_fake_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    httpd = TrackingHTTPServer(("127.0.0.1", 0), _FailingHandler, None)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        for path in ("/hung-up", "/bug"):
            connection = http.client.HTTPConnection(str(host), int(port), timeout=5)
            try:
                connection.request("GET", path)
                with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
                    connection.getresponse()
            finally:
                connection.close()
    finally:
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
    printed = capsys.readouterr().err
    assert "ValueError: a bug in the fake" in printed
    assert "BrokenPipeError" not in printed
