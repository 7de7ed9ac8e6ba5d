"""The Supabase-compatible storage server as the bench runs it: a process that also counts what it received.

    python -m bench.storage_server --root DIR --service-key KEY [--upload-latency MIN,MAX ...]

prints `listening on http://HOST:PORT` like `tests.servers.supabase_storage`, which it wraps unchanged; then,
for every line `counts` read on its standard input, it prints one JSON line: the requests received so far,
by kind (`{"POST object": 12, "PATCH upload/resumable": 3, ...}`). The server keeps that log in its own
process, so the bench asks for it over this pipe rather than over HTTP the services could also reach.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType

from tests.servers.supabase_storage import API_PREFIX, SupabaseStorageServer

COUNTS_COMMAND = "counts"
# The object API's sub-routes that name an operation rather than a bucket (`object/sign/BUCKET/KEY`).
_OBJECT_OPERATIONS = frozenset(
    {"sign", "public", "authenticated", "info", "list", "move", "copy", "upload", "render"}
)


def request_kind(method: str, path: str) -> str:
    """`POST /storage/v1/object/sign/bucket/a.mp4` → `POST object/sign (a/*.mp4)`: the route, then what the
    key names (its top folder and its extension: `live/*.m4s`), without bucket or the rest of the key, so the
    report says which of a job's objects cost the requests."""
    segments = path.removeprefix(API_PREFIX).strip("/").split("/")
    key: list[str] = []
    if segments[0] == "object" and len(segments) > 1 and segments[1] in _OBJECT_OPERATIONS:
        route = f"object/{segments[1]}"
        key = segments[3:]
    elif segments[0] == "upload" and len(segments) > 1:
        route = f"upload/{segments[1]}"
    else:
        route = segments[0] or "/"
        key = segments[2:] if segments[0] == "object" else []
    if not key:
        return f"{method} {route}"
    name = key[-1].split("?", 1)[0]
    extension = f".{name.rsplit('.', 1)[1]}" if "." in name else ""
    folder = f"{key[0]}/" if len(key) > 1 else ""
    return f"{method} {route} ({folder}*{extension})"


def count_by_kind(requests: Iterable[tuple[str, str]]) -> dict[str, int]:
    """How many (method, path) requests of each kind, most frequent first."""
    counted = Counter(request_kind(method, path) for method, path in requests)
    return dict(counted.most_common())


def _latency_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds, not {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, not {text!r}")
    return low, high


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", type=Path, required=True, help="folder for object bytes")
    parser.add_argument("--service-key", required=True)
    parser.add_argument("--upload-latency", type=_latency_range, default=None, metavar="MIN,MAX")
    parser.add_argument("--upload-latency-seed", type=int, default=0)
    parser.add_argument("--upload-latency-scale-by-bytes", type=int, default=None, metavar="BYTES")
    arguments = parser.parse_args(argv)
    stop_requested = threading.Event()

    def request_stop(_signal: int, _frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with SupabaseStorageServer(
        arguments.root,
        arguments.service_key,
        arguments.host,
        arguments.port,
        upload_latency=arguments.upload_latency,
        upload_latency_seed=arguments.upload_latency_seed,
        upload_latency_scale_by_bytes=arguments.upload_latency_scale_by_bytes,
    ) as server:

        def answer_counts() -> None:
            # A blocked read would hold up SIGTERM's handler in the main thread: read on a thread of its own.
            for line in sys.stdin:
                if line.strip() == COUNTS_COMMAND:
                    received = [(request.method, request.path) for request in server.received_requests()]
                    print(json.dumps(count_by_kind(received)), flush=True)
            stop_requested.set()

        threading.Thread(target=answer_counts, name="counts", daemon=True).start()
        print(f"listening on {server.url}", flush=True)
        while not stop_requested.wait(0.5):
            pass


if __name__ == "__main__":
    main()
