"""gRPC's asyncio completions, delivered at the rate they come rather than one per turn of the event loop.

Transport code. grpc.aio hands each completion (a message received, a message sent, a call arriving) from
its poller thread to the event loop through a socket pair: the thread writes one byte per completion, and
the loop's reader (`PollerCompletionQueue._handle_events`) reads one byte, then runs every completion queued.
A busy loop turns fewer times a second than completions arrive, so the bytes pile up; once the socket holds
a few hundred, the poller thread blocks writing the next one, and from then on it passes the loop one
completion per turn of the loop. With fifty jobs at once every gRPC message between the services then stood
still for seconds (traced in make bench: every sentence the gateway sent media in a 4 s window arrived in
the same millisecond at its end; the poller thread was found blocked in write()).

`drain_wakeups` puts a reader in front of grpc's own: it reads all but one of the bytes waiting, then
lets grpc read the last and run the completions, so the socket never fills. grpc's reader still reads
its byte from a socket that holds one, so it never blocks. Where grpc's reader is not found (another
version, another loop) nothing changes, and that is logged.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import functools
import logging
import selectors
import socket
import termios
from collections.abc import Callable

logger = logging.getLogger(__name__)

# The method grpc.aio registers as the reader of its completion queue's wake-up socket.
_GRPC_READER_NAME = "_handle_events"
_GRPC_QUEUE_TYPE_NAME = "PollerCompletionQueue"


def drain_wakeups(loop: asyncio.AbstractEventLoop) -> bool:
    """Puts the draining reader in front of grpc.aio's on `loop` (call it once the process has made its
    first gRPC server or channel, which makes the completion queue); True when it did, or already had."""
    selector = getattr(loop, "_selector", None)
    if not isinstance(selector, selectors.BaseSelector):
        logger.warning("gRPC completions are not drained: the event loop has no selector to look in")
        return False
    for key in list(selector.get_map().values()):
        reader = key.data[0] if isinstance(key.data, tuple) and key.data else None
        callback = getattr(reader, "_callback", None)
        if isinstance(callback, _DrainingReader):
            return True
        # grpc.aio registers its reader bound to its queue, wrapped in a partial that passes the loop.
        method = callback.func if isinstance(callback, functools.partial) else callback
        owner = getattr(method, "__self__", None)
        is_grpc_reader = (
            getattr(method, "__name__", "") == _GRPC_READER_NAME
            and type(owner).__name__ == _GRPC_QUEUE_TYPE_NAME
        )
        if is_grpc_reader and isinstance(key.fileobj, socket.socket) and callable(callback):
            wakeup_socket = key.fileobj
            loop.remove_reader(wakeup_socket)
            loop.add_reader(wakeup_socket, _DrainingReader(wakeup_socket, callback))
            return True
    logger.warning("gRPC completions are not drained: grpc.aio's wake-up reader was not found")
    return False


def waiting_bytes(wakeup_socket: socket.socket) -> int:
    """How many bytes the socket holds unread (FIONREAD)."""
    count = array.array("i", [0])
    fcntl.ioctl(wakeup_socket.fileno(), termios.FIONREAD, count, True)
    return int(count[0])


class _DrainingReader:
    """Reads all but one of the wake-up bytes waiting, then calls grpc's reader, which reads the last."""

    def __init__(self, wakeup_socket: socket.socket, grpc_reader: Callable[[], object]) -> None:
        self._socket = wakeup_socket
        self._grpc_reader = grpc_reader

    def __call__(self) -> None:
        waiting = waiting_bytes(self._socket)
        if waiting == 0:
            return  # woken with nothing to read: grpc's reader would block the loop in recv()
        extra = waiting - 1
        while extra > 0:
            # Blocking socket, but the bytes are there: only this loop's thread reads it.
            extra -= len(self._socket.recv(min(extra, 65_536)))
        self._grpc_reader()
