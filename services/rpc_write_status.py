"""A streaming call that the server ends while the client is still writing reports the server's status.

Transport code. When a server ends a call whose requests the client is still sending (media fails a live
narration while the gateway is still streaming it sentences), the client's write in flight fails. grpc.aio
(1.85; grpc/grpc#36066, a fix proposed in grpc/grpc#43486) then sets the call's status to INTERNAL "Internal
error from Core", over the status the server had sent, whenever the loop handles the failed write after that
status. The gateway read media's FAILED_PRECONDITION or UNAVAILABLE as INTERNAL: retried what should not be,
and told the listener nothing (214 of 300 calls through the gateway's own channel, to a media that ends
NarrateLive after its first message while the gateway streams fifty sentences). grpc's blocking client, and
other languages' clients, report the server's status.

`keep_server_status` replaces grpc.aio's write with one that, when a write fails, first waits a moment for
the status Core delivers once a call has ended, and sets INTERNAL only when none comes: a write refused for
another reason (one batch too many, say), for which Core delivers no status (grpc/grpc#34148, why grpc sets
one). It replaces only the write it was written against, recognised by its source; any other grpc is left
as it is, and that is logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from typing import Any, Final

from grpc import _common
from grpc._cython import cygrpc
from grpc.aio import _call

logger = logging.getLogger(__name__)

# The SHA-256 of grpcio 1.85.0's `_StreamRequestMixin._write`, which `_write` below replaces.
_REPLACED_WRITE_SHA256: Final = "9ba399a72c7dfd0353df8ee7b5c55d4a308a04c3f0e4bbfb713e46f12855d7df"
# How long a failed write waits for the call's status. Core delivers it as soon as the call has ended, so
# this bounds only the wait of a write refused while the call goes on.
STATUS_GRACE_SECONDS: Final = 1.0


def keep_server_status() -> bool:
    """Makes grpc.aio's streaming calls report the server's status when a write fails as the call ends; True
    when they do (already, or now), False when this grpc's write is not the one this replaces."""
    mixin: Any = _call._StreamRequestMixin
    if mixin._write is _write:
        return True
    try:
        source = inspect.getsource(mixin._write)
    except (OSError, TypeError):
        source = ""  # grpc installed without its Python source: nothing to recognise
    if hashlib.sha256(source.encode()).hexdigest() != _REPLACED_WRITE_SHA256:
        logger.warning(
            "grpc.aio's streaming write is not the one this process mends (grpc/grpc#36066): a call the "
            "server ends during a write may report INTERNAL in place of the server's status"
        )
        return False
    mixin._write = _write
    return True


async def _write(self: Any, request: Any) -> None:
    """grpcio 1.85.0's `_StreamRequestMixin._write` (Apache-2.0), but for a failed send: the status Core
    delivers, when it comes within STATUS_GRACE_SECONDS, rather than INTERNAL over it."""
    if self.done():
        raise asyncio.InvalidStateError(_call._RPC_ALREADY_FINISHED_DETAILS)
    if self._done_writing_flag:
        raise asyncio.InvalidStateError(_call._RPC_HALF_CLOSED_DETAILS)
    if not self._metadata_sent.is_set():
        await self._metadata_sent.wait()
        if self.done():
            await self._raise_for_status()

    serialized_request = _common.serialize(request, self._request_serializer)
    try:
        await self._cython_call.send_serialized_message(serialized_request)
    except cygrpc.InternalError as error:
        if not await _status_delivered(self._cython_call):
            self._cython_call.set_internal_error(str(error))
        await self._raise_for_status()
    except asyncio.CancelledError:
        if not self.cancelled():
            self.cancel()
        raise


async def _status_delivered(cython_call: Any) -> bool:
    """Whether the call has its status from Core, waiting for it at most STATUS_GRACE_SECONDS."""
    if cython_call.done():
        return True
    try:
        async with asyncio.timeout(STATUS_GRACE_SECONDS):
            await cython_call.status()
    except TimeoutError:
        return False
    return True
