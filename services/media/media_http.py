"""The media endpoint: serves the embedded local storage's assets over HTTP, to holders of a signed link.

Clients anywhere fetch what the gateway hands them (`media_links` mints the links): byte ranges for seeking,
the right content type, and caching right for each kind — a video or segment never changes under its key, a
growing live playlist must never be cached. Every refusal is the same 403 whatever the reason (forged,
altered, expired, out of scope), so a caller without a valid link learns nothing about which keys exist;
only a valid link to an asset since deleted gets 404.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Final

from aiohttp import web

from services.media.media_links import MediaLinkSigner

logger = logging.getLogger("services.media.http")

# Where the endpoint lives under the public base (the edge routes this prefix to media's HTTP port).
ROUTE_PREFIX: Final = "/media"
_CONTENT_TYPES: Final = {
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".aac": "audio/aac",
    ".wav": "audio/wav",
    ".vtt": "text/vtt; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}
# Rewritten in place while a narration is live: every reload must reach the endpoint.
_MUTABLE_SUFFIXES: Final = (".m3u8",)
_FORBIDDEN_BODY: Final = (
    "forbidden: this link is not valid (it may have expired); ask for the meditation again\n"
)
_NOT_FOUND_BODY: Final = "not found: this asset has been deleted\n"
# What every answer carries: no sniffing a type, no framing of a VTT or playlist as a page, no referrer leak.
_COMMON_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "cross-origin",
    # The link is the credential: a page on another origin that holds it may read it (a <track> needs this).
    "Access-Control-Allow-Origin": "*",
}


def build_media_app(signer: MediaLinkSigner, storage_root: Path) -> web.Application:
    """The aiohttp application serving `storage_root`'s assets at `{ROUTE_PREFIX}/{token}/{key}`."""
    root = storage_root.resolve()

    async def serve(request: web.Request) -> web.StreamResponse:
        grant = signer.verify(request.match_info["token"], request.match_info["key"])
        if grant is None:
            return _refusal(403, _FORBIDDEN_BODY)
        path = (root / grant.storage_key).resolve()
        # verify() admits only well-formed keys; this is the last line should that ever change.
        if not path.is_relative_to(root):
            return _refusal(403, _FORBIDDEN_BODY)
        if not path.is_file():
            return _refusal(404, _NOT_FOUND_BODY)
        suffix = path.suffix.lower()
        headers = dict(_COMMON_HEADERS)
        headers["Content-Type"] = _CONTENT_TYPES.get(suffix, "application/octet-stream")
        if suffix in _MUTABLE_SUFFIXES:
            headers["Cache-Control"] = "no-store"
        else:
            # Immutable under its key, and private: only the link's holder, only until the link expires.
            headers["Cache-Control"] = f"private, max-age={signer.seconds_left(grant)}, immutable"
        return web.FileResponse(path, headers=headers)

    async def refuse(request: web.Request) -> web.StreamResponse:
        return _refusal(403, _FORBIDDEN_BODY)

    app = web.Application()
    # GET (and HEAD, which aiohttp adds) only; `key` spans slashes, the token never does.
    app.router.add_get(ROUTE_PREFIX + "/{token:[^/]+}/{key:.+}", serve)
    app.router.add_route("*", ROUTE_PREFIX + "/{tail:.*}", refuse)
    return app


def _refusal(status: int, body: str) -> web.StreamResponse:
    return web.Response(status=status, text=body, headers=_COMMON_HEADERS | {"Cache-Control": "no-store"})


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound socket for the endpoint, bound before anything mints a link: with port 0 the port it got is
    what the default public URL names."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


class MediaHttpServer:
    """The endpoint on its listening socket, started and stopped with the media service."""

    def __init__(self, app: web.Application, listener: socket.socket) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        self._listener = listener

    async def start(self) -> None:
        """Starts serving on the socket."""
        await self._runner.setup()
        site = web.SockSite(self._runner, self._listener)
        await site.start()
        host, port = self._listener.getsockname()[:2]
        logger.info("media endpoint serving on %s:%d%s", host, port, ROUTE_PREFIX)

    async def stop(self) -> None:
        """Stops serving; downloads in flight are cut after a second."""
        await self._runner.cleanup()
