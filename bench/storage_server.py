"""The Supabase-compatible storage server as the bench runs it: a process that also counts what it received.

    python -m bench.storage_server --root DIR --service-key KEY [--upload-latency MIN,MAX ...]

prints `listening on http://HOST:PORT` like `tests.servers.supabase_storage`, which it wraps unchanged; then,
for every line `counts` read on its standard input, it prints one JSON line: the requests received so far,
by kind (`{"POST object": 12, "PATCH upload/resumable": 3, ...}`). For every line `playlists`, it prints one
JSON line listing every version of every `.m3u8` object stored so far (live playlists are rewritten in place
as they grow), oldest first: `[{"key": "live/ID/R.m3u8", "readable_monotonic_seconds": 812.5,
"duration_seconds": 3.0, "is_final": false}, ...]`, timed by time.monotonic() when it became readable. The
server keeps these logs in its own process, so the bench asks for them over this pipe rather than over HTTP
the services could also reach.
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

from bench.continuity import describe_playlist
from tests.servers.supabase_storage import API_PREFIX, StoredObjectNotice, SupabaseStorageServer

COUNTS_COMMAND = "counts"
PLAYLISTS_COMMAND = "playlists"
PLAYLIST_SUFFIX = ".m3u8"
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


class PlaylistHistory:
    """Every version of every playlist stored, as `on_object_stored` reports them from the request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (readable_monotonic_seconds, key, duration_seconds, is_final) of each version.
        self._versions: list[tuple[float, str, float, bool]] = []

    def record(self, notice: StoredObjectNotice) -> None:
        # Parsed now: the next version overwrites these bytes, and only the figures are asked for.
        duration_seconds, is_final = describe_playlist(notice.data.decode("utf-8", "replace"))
        with self._lock:
            self._versions.append(
                (notice.readable_monotonic_seconds, notice.name, duration_seconds, is_final)
            )

    def versions(self) -> list[dict[str, object]]:
        """The versions recorded so far, oldest first, as the `playlists` command prints them."""
        with self._lock:
            recorded = list(self._versions)
        # Two request threads may report in another order than their objects became readable.
        recorded.sort(key=lambda version: version[0])
        return [
            {
                "key": key,
                "readable_monotonic_seconds": readable,
                "duration_seconds": duration_seconds,
                "is_final": is_final,
            }
            for readable, key, duration_seconds, is_final in recorded
        ]


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
    playlists = PlaylistHistory()
    with SupabaseStorageServer(
        arguments.root,
        arguments.service_key,
        arguments.host,
        arguments.port,
        upload_latency=arguments.upload_latency,
        upload_latency_seed=arguments.upload_latency_seed,
        upload_latency_scale_by_bytes=arguments.upload_latency_scale_by_bytes,
        on_object_stored=playlists.record,
        notified_suffixes=(PLAYLIST_SUFFIX,),
    ) as server:

        def answer_commands() -> None:
            # A blocked read would hold up SIGTERM's handler in the main thread: read on a thread of its own.
            for line in sys.stdin:
                command = line.strip()
                if command == COUNTS_COMMAND:
                    received = [(request.method, request.path) for request in server.received_requests()]
                    print(json.dumps(count_by_kind(received)), flush=True)
                elif command == PLAYLISTS_COMMAND:
                    print(json.dumps(playlists.versions()), flush=True)
            stop_requested.set()

        threading.Thread(target=answer_commands, name="commands", daemon=True).start()
        print(f"listening on {server.url}", flush=True)
        while not stop_requested.wait(0.5):
            pass


if __name__ == "__main__":
    main()
