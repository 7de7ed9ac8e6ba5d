"""`make run`: the whole local stack in the foreground, with a key to call it, until Ctrl-C stops it."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from scripts.stack import STACK_OWNER, metrics_ports_from, running_stack

ROOT = Path(__file__).resolve().parent.parent
PORTS = {"gateway": 50051, "content": 50052, "media": 50053, "media-http": 50054, "edge": 8080}


def main() -> int:
    """Starts content, media, gateway and the browser edge on their usual ports (the environment honoured,
    as the services read it), prints how to call them, and stops them all on Ctrl-C or SIGTERM."""
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    print("Starting content, media, gateway and the edge (logs in var/logs/) …", flush=True)
    metrics_ports = metrics_ports_from(os.environ)
    try:
        with running_stack(
            ROOT / "var", ports={**PORTS, **metrics_ports}, edge=True, metrics=bool(metrics_ports)
        ) as stack:
            # Content and media answer only the gateway's certificate: operators' tools present it too.
            certificate = " ".join(
                f"{name}={shlex.quote(value)}" for name, value in stack.operator_certificate().items()
            )
            for key, url in stack.metrics_urls.items():
                print(f"{key} metrics: curl {url}", flush=True)
            print(
                f"\nThe gateway is serving on {stack.gateway_address}; the page on {stack.edge_url}/.\n"
                f"An API key for the owner {STACK_OWNER!r}, made for this run:\n\n"
                f"  export STILLPOINT_API_KEY={stack.api_key}\n\n"
                "Then, for example:\n"
                "  .venv/bin/stillpoint generate --conversation examples/conversation.json\n"
                '  grpcurl -plaintext -H "authorization: Bearer $STILLPOINT_API_KEY" '
                f"{stack.gateway_address} list\n\n"
                "`stillpoint stats` and `stillpoint pregenerate` call the content service directly, with the "
                "gateway's internal certificate:\n\n"
                f"  export {certificate}\n\n"
                "Ctrl-C stops everything.",
                flush=True,
            )
            stopping.wait()
            print("\nStopping …", flush=True)
    except RuntimeError as error:
        print(f"run: a service did not start: {error}", file=sys.stderr)
        return 1
    print("Services stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
