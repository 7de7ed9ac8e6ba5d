"""`make demo`: starts the three services and the browser edge, generates a meditation for the sample
conversation, and (on a terminal) keeps serving the page until Ctrl-C; then stops them."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from scripts.stack import metrics_ports_from, running_stack
from services import cli

ROOT = Path(__file__).resolve().parent.parent
PORTS = {"gateway": 50051, "content": 50052, "media": 50053, "media-http": 50054, "edge": 8080}


def main() -> int:
    """Runs the whole job once, on the embedded offline defaults."""
    var_root = ROOT / "var"
    conversation = ROOT / "examples" / "conversation.json"
    print("Starting content, media, gateway and the edge (logs in var/logs/) …", flush=True)
    # With STILLPOINT_METRICS_PORT=P: gateway, content and media serve /metrics on P, P + 1 and P + 2.
    metrics_ports = metrics_ports_from(os.environ)
    try:
        with running_stack(
            var_root, ports={**PORTS, **metrics_ports}, edge=True, metrics=bool(metrics_ports)
        ) as stack:
            print(
                f"Gateway serving on {stack.gateway_address}\n\n"
                f"Open {stack.edge_url}/ in a browser and sign in with this run's API key:\n\n"
                f"  {stack.api_key}\n",
                flush=True,
            )
            for key, url in stack.metrics_urls.items():
                print(f"{key} metrics: curl {url}", flush=True)
            code = cli.main(
                [
                    "--gateway",
                    stack.gateway_address,
                    "--api-key",
                    stack.api_key,
                    "--out",
                    str(ROOT / "out"),
                    "generate",
                    "--conversation",
                    str(conversation),
                ]
            )
            if code == 0 and sys.stdin.isatty():
                _serve_until_interrupted(stack.edge_url)
    except RuntimeError as error:
        print(f"demo: a service did not start: {error}", file=sys.stderr)
        return 1
    print("Services stopped.")
    return code


def _serve_until_interrupted(edge_url: str) -> None:
    """Keeps the stack up for the browser until Ctrl-C (or SIGTERM)."""
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    print(
        f"\nStill serving {edge_url}/ (the meditation above is in your list there). Ctrl-C stops.", flush=True
    )
    stopping.wait()


if __name__ == "__main__":
    sys.exit(main())
