"""Serves the built page (web/dist) to the edge on 127.0.0.1: Envoy routes to it, having no file server."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

# The page calls only its own origin (gRPC-Web through the edge); media and subtitles may come from the edge
# or, with a storage that signs its own links (Supabase), from an https origin.
_CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: https:",
        "media-src 'self' blob: https:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
_COMMON_HEADERS: Final = {
    "Content-Security-Policy": _CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_NOT_BUILT: Final = "The page is not built: run `make web` (or `make demo`), then reload.\n"


def build_page_app(page_dir: Path) -> web.Application:
    """`/` is the page; `/assets/…` its content-hashed scripts and styles; `/healthz` says the edge is up."""
    root = page_dir.resolve()

    async def index(request: web.Request) -> web.StreamResponse:
        page = root / "index.html"
        if not page.is_file():
            return web.Response(status=503, text=_NOT_BUILT, headers=_COMMON_HEADERS)
        # Always revalidated: a new build names new assets.
        return web.FileResponse(page, headers={**_COMMON_HEADERS, "Cache-Control": "no-cache"})

    async def asset(request: web.Request) -> web.StreamResponse:
        path = (root / "assets" / request.match_info["name"]).resolve()
        if path.parent != root / "assets" or not path.is_file():
            raise web.HTTPNotFound(headers=_COMMON_HEADERS)
        # Vite names every asset by its content's hash: it never changes under its name.
        return web.FileResponse(
            path, headers={**_COMMON_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"}
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/assets/{name}", asset)
    app.router.add_get("/healthz", healthz)
    return app


async def start_page_server(page_dir: Path, port: int = 0) -> tuple[web.AppRunner, int]:
    """Starts serving on 127.0.0.1 (`port` 0: a free one); returns the runner to clean up and the port."""
    runner = web.AppRunner(build_page_app(page_dir), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    addresses = runner.addresses
    if not addresses:
        await runner.cleanup()
        raise RuntimeError("the page server did not open a socket")
    return runner, int(addresses[0][1])
