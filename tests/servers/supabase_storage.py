"""An HTTP server on 127.0.0.1 that speaks enough of the Supabase Storage API for storage3 and TUS uploads.

Run in-process (`SupabaseStorageServer`) or as a process:

    python -m tests.servers.supabase_storage --host 127.0.0.1 --port 0 --root DIR --service-key KEY

which prints `listening on http://HOST:PORT` (the project URL, as SUPABASE_URL looks) once it accepts
connections. Object bytes live under the root folder; which objects exist lives as long as the server.

Like the real service (`supabase/storage`), API errors are HTTP 400 with the meaningful status in the body's
`statusCode` ("404", "409", "403"), while the TUS routes answer with the HTTP status itself.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import signal
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from types import FrameType
from typing import Final

from tests.servers.http_base import TrackingHandler, TrackingHTTPServer

DEFAULT_SERVICE_KEY: Final = "service-role-test-key"
API_PREFIX: Final = "/storage/v1/"
TUS_VERSION: Final = "1.0.0"
TUS_CONTENT_TYPE: Final = "application/offset+octet-stream"
# The request headers kept in the log: never Authorization or apikey.
RECORDED_HEADERS: Final = (
    "content-type",
    "content-length",
    "cache-control",
    "x-upsert",
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "range",
)
_BEARER: Final = re.compile(r"^Bearer\s+", re.IGNORECASE)
_BUCKET_NAME: Final = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_RANGE: Final = re.compile(r"^bytes=(\d*)-(\d*)$")
_COPY_CHUNK_BYTES: Final = 1 << 20
# An upload whose latency scales with its size never takes less than this share of the drawn latency.
_MIN_UPLOAD_LATENCY_SHARE: Final = 0.05


@dataclass
class ReceivedRequest:
    """One request as the server saw it: no credentials, no query string (signed URL tokens live there)."""

    method: str
    path: str
    # Lower-case names, RECORDED_HEADERS only.
    headers: dict[str, str]
    # Whether an Authorization or apikey header came with it (its value is never kept).
    has_credentials: bool
    # Multipart uploads: the text fields, and `<part>.content-type` for each file part.
    form: dict[str, str] = field(default_factory=dict)
    # None until the server answers, and for ever for a request it hung up on.
    status: int | None = None


class SupabaseStorageServer:
    """A ThreadingHTTPServer on its own thread; `start()` returns the project URL for storage3 or supabase."""

    def __init__(
        self,
        root: Path,
        service_key: str = DEFAULT_SERVICE_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        upload_latency: tuple[float, float] | None = None,
        upload_latency_seed: int = 0,
        upload_latency_scale_by_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
        on_object_stored: Callable[[StoredObjectNotice], None] | None = None,
        notified_suffixes: tuple[str, ...] = (),
    ) -> None:
        """`upload_latency` (min, max seconds) delays every object upload and TUS PATCH by a time drawn from a
        uniform range seeded with `upload_latency_seed`, so runs are reproducible; None answers at once.

        With `upload_latency_scale_by_bytes`, the drawn latency is that of an upload of this many bytes and
        scales with each upload's size (never below 5 % of it): small objects pay little more than a round
        trip.

        `clock` (seconds since the epoch) dates signed URLs and decides when they expire: a test passes its
        own to see a URL expire without waiting for it.

        `on_object_stored` is called, on the request's thread, each time an object whose name ends with one of
        `notified_suffixes` (`.m3u8`) becomes readable, a new version of it included: its bytes as stored,
        which a later upsert replaces. It must not raise (the upload would fail with a 500)."""
        self._state = _StorageState(
            root, service_key, upload_latency, upload_latency_seed, upload_latency_scale_by_bytes, clock
        )
        self._state.on_object_stored = on_object_stored
        self._state.notified_suffixes = notified_suffixes
        self._host = host
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Binds and serves in the background; returns the project URL (`http://HOST:PORT`)."""
        if self._httpd is not None:
            raise RuntimeError("the server is already started")
        self._httpd = _HTTPServer((self._host, self._port), _Handler, self._state)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="supabase-storage",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stops serving and closes open keep-alive connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join()

    @property
    def url(self) -> str:
        """The project URL, `http://HOST:PORT`; the Storage API is under `/storage/v1`."""
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{_url_host(str(host))}:{port}"

    def received_requests(self) -> list[ReceivedRequest]:
        """What the server has received, oldest first."""
        return self._state.received_requests()

    def clear_requests(self) -> None:
        self._state.clear_requests()

    def interrupt_next_patches(self, count: int = 1) -> None:
        """The next `count` TUS PATCH requests keep only the first half of their chunk, then the server hangs
        up without answering, as a connection lost mid-chunk would look."""
        self._state.interrupt_patches(count)

    def fail_next_requests(self, count: int = 1, status: int | None = 503, path_part: str = "") -> None:
        """The next `count` requests whose path contains `path_part` fail before doing anything: answered
        with `status` and Storage's error body (a 5xx or 429 outage), or, with `status` None, by hanging up
        without an answer (a connection lost or a gateway timing out)."""
        self._state.fail_requests(count, status, path_part)

    def stored_object(self, bucket: str, name: str) -> StoredObjectView | None:
        """What is stored under `bucket`/`name`, read from the server's side; None if nothing is."""
        return self._state.object_view(bucket, name)

    def stored_names(self, bucket: str) -> list[str]:
        """The names of every object in `bucket`, read from the server's side."""
        return self._state.object_names(bucket)

    def __enter__(self) -> SupabaseStorageServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass(frozen=True)
class StoredObjectView:
    """An object as stored, for assertions that should not go through the API."""

    data: bytes
    content_type: str
    cache_control: str


@dataclass(frozen=True)
class StoredObjectNotice:
    """An object (or a new version of one) that has just become readable, for `on_object_stored`."""

    bucket: str
    name: str
    data: bytes
    # time.monotonic() when it became readable: shared by every process of the machine, so another process
    # can compare it with its own clock.
    readable_monotonic_seconds: float


# State ---------------------------------------------------------------------------------------------------


@dataclass
class _Bucket:
    id: str
    name: str
    is_public: bool
    file_size_limit: int | None
    allowed_mime_types: list[str] | None
    created_at: datetime

    def to_json_object(self) -> dict[str, object]:
        created = self.created_at.isoformat()
        return {
            "id": self.id,
            "name": self.name,
            "owner": "",
            "public": self.is_public,
            "type": "STANDARD",
            "file_size_limit": self.file_size_limit,
            "allowed_mime_types": self.allowed_mime_types,
            "created_at": created,
            "updated_at": created,
        }


@dataclass
class _StoredObject:
    id: str
    bucket: str
    name: str
    size_bytes: int
    content_type: str
    cache_control: str
    etag: str
    created_at: datetime
    data_path: Path

    def to_json_object(self) -> dict[str, object]:
        created = self.created_at.isoformat()
        return {
            "id": self.id,
            "version": self.id,
            "name": self.name,
            "bucket_id": self.bucket,
            "size": self.size_bytes,
            "content_type": self.content_type,
            "cache_control": self.cache_control,
            "etag": self.etag,
            "metadata": {
                "size": self.size_bytes,
                "mimetype": self.content_type,
                "cacheControl": self.cache_control,
                "eTag": self.etag,
                "lastModified": created,
            },
            "last_modified": created,
            "created_at": created,
            "updated_at": created,
        }


@dataclass
class _Upload:
    """A TUS upload: bytes arrive in order at `offset` until `length` is reached."""

    id: str
    bucket: str
    name: str
    length: int
    content_type: str
    cache_control: str
    is_upsert: bool
    data_path: Path
    offset: int = 0
    is_complete: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class _StorageError(Exception):
    """An error answered with Storage's error body."""

    def __init__(self, status_code: int, code: str, error: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = {"statusCode": str(status_code), "code": code, "error": error, "message": message}
        self.headers: dict[str, str] = {}


class _HangupError(Exception):
    """Close the connection without an answer."""


class _StorageState:
    """What every handler thread shares: buckets, objects, uploads, the signing secret and the log."""

    def __init__(
        self,
        root: Path,
        service_key: str,
        upload_latency: tuple[float, float] | None = None,
        upload_latency_seed: int = 0,
        upload_latency_scale_by_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if upload_latency_scale_by_bytes is not None and upload_latency_scale_by_bytes <= 0:
            raise ValueError("upload_latency_scale_by_bytes must be a positive number of bytes")
        if upload_latency is not None:
            low, high = upload_latency
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
                raise ValueError(
                    f"upload_latency must be (min, max) with 0 <= min <= max, not {upload_latency}"
                )
        self.upload_latency = upload_latency
        self.upload_latency_scale_by_bytes = upload_latency_scale_by_bytes
        self._upload_latency_random = random.Random(upload_latency_seed)
        self.root = root.resolve()
        self.service_key = service_key
        self.clock = clock
        # Signs download URLs; a fresh one per server, so URLs never outlive it.
        self.signing_secret = secrets.token_bytes(32)
        for folder in ("objects", "uploads", "incoming"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._objects: dict[tuple[str, str], _StoredObject] = {}
        self._uploads: dict[str, _Upload] = {}
        self._requests: list[ReceivedRequest] = []
        self._patches_to_interrupt = 0
        self._failures_left = 0
        self._failure_status: int | None = None
        self._failure_path_part = ""
        self.on_object_stored: Callable[[StoredObjectNotice], None] | None = None
        self.notified_suffixes: tuple[str, ...] = ()

    # Log

    def record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def set_status(self, request: ReceivedRequest, status: int) -> None:
        with self._lock:
            request.status = status

    def received_requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def interrupt_patches(self, count: int) -> None:
        with self._lock:
            self._patches_to_interrupt = count

    def fail_requests(self, count: int, status: int | None, path_part: str) -> None:
        with self._lock:
            self._failures_left = count
            self._failure_status = status
            self._failure_path_part = path_part

    def take_failure(self, path: str) -> tuple[bool, int | None]:
        """Whether the request to `path` is to fail, and with which status (None: hang up)."""
        with self._lock:
            if self._failures_left <= 0 or self._failure_path_part not in path:
                return False, None
            self._failures_left -= 1
            return True, self._failure_status

    def draw_upload_latency_seconds(self, size_bytes: int) -> float:
        """The delay of one upload or TUS PATCH of `size_bytes`; 0 when no latency is configured."""
        if self.upload_latency is None:
            return 0.0
        with self._lock:
            seconds = self._upload_latency_random.uniform(*self.upload_latency)
        if self.upload_latency_scale_by_bytes is not None:
            seconds *= max(size_bytes / self.upload_latency_scale_by_bytes, _MIN_UPLOAD_LATENCY_SHARE)
        return seconds

    def take_patch_interruption(self) -> bool:
        with self._lock:
            if self._patches_to_interrupt <= 0:
                return False
            self._patches_to_interrupt -= 1
            return True

    # Buckets

    def create_bucket(self, bucket: _Bucket) -> None:
        with self._lock:
            if bucket.id in self._buckets:
                raise _StorageError(409, "BucketAlreadyExists", "Duplicate", "The resource already exists")
            self._buckets[bucket.id] = bucket

    def bucket(self, bucket_id: str) -> _Bucket:
        with self._lock:
            found = self._buckets.get(bucket_id)
        if found is None:
            raise _no_such_bucket()
        return found

    def buckets(self) -> list[_Bucket]:
        with self._lock:
            return list(self._buckets.values())

    # Objects

    def find_object(self, bucket: str, name: str) -> _StoredObject:
        self.bucket(bucket)
        with self._lock:
            found = self._objects.get((bucket, name))
        if found is None:
            raise _no_such_key()
        return found

    def object_view(self, bucket: str, name: str) -> StoredObjectView | None:
        with self._lock:
            found = self._objects.get((bucket, name))
        if found is None:
            return None
        return StoredObjectView(found.data_path.read_bytes(), found.content_type, found.cache_control)

    def object_names(self, bucket: str) -> list[str]:
        with self._lock:
            return sorted(name for (in_bucket, name) in self._objects if in_bucket == bucket)

    def object_exists(self, bucket: str, name: str) -> bool:
        with self._lock:
            return (bucket, name) in self._objects

    def incoming_path(self) -> Path:
        return self.root / "incoming" / uuid.uuid4().hex

    def commit_object(
        self,
        bucket: str,
        name: str,
        source: Path,
        content_type: str,
        cache_control: str,
        is_upsert: bool,
    ) -> _StoredObject:
        """Moves a fully received file into the store; refuses to replace an object unless upserting."""
        listener = self.on_object_stored if name.endswith(self.notified_suffixes) else None
        # Read now: once stored, the next upsert may remove the file.
        data = source.read_bytes() if listener is not None else b""
        object_id = str(uuid.uuid4())
        data_path = self.root / "objects" / object_id
        digest = hashlib.md5()
        with open(source, "rb") as stream:
            while chunk := stream.read(_COPY_CHUNK_BYTES):
                digest.update(chunk)
        stored = _StoredObject(
            id=object_id,
            bucket=bucket,
            name=name,
            size_bytes=source.stat().st_size,
            content_type=content_type,
            cache_control=cache_control,
            etag=f'"{digest.hexdigest()}"',
            created_at=datetime.now(UTC),
            data_path=data_path,
        )
        with self._lock:
            previous = self._objects.get((bucket, name))
            if previous is not None and not is_upsert:
                source.unlink(missing_ok=True)
                raise _duplicate()
            source.replace(data_path)
            self._objects[(bucket, name)] = stored
            # Under the lock readers look objects up with: no reader could have had this version earlier.
            readable_at = time.monotonic()
        if previous is not None:
            previous.data_path.unlink(missing_ok=True)
        if listener is not None:
            listener(StoredObjectNotice(bucket, name, data, readable_at))
        return stored

    def delete_object(self, bucket: str, name: str) -> _StoredObject | None:
        with self._lock:
            removed = self._objects.pop((bucket, name), None)
        if removed is not None:
            removed.data_path.unlink(missing_ok=True)
        return removed

    # TUS uploads

    def add_upload(self, upload: _Upload) -> None:
        with self._lock:
            self._uploads[upload.id] = upload

    def upload(self, upload_id: str) -> _Upload:
        with self._lock:
            found = self._uploads.get(upload_id)
        if found is None:
            raise _StorageError(404, "NoSuchUpload", "NoSuchUpload", "Upload not found")
        return found

    def remove_upload(self, upload_id: str) -> None:
        with self._lock:
            removed = self._uploads.pop(upload_id, None)
        if removed is not None:
            removed.data_path.unlink(missing_ok=True)


class _HTTPServer(TrackingHTTPServer[_StorageState]):
    """The shared threaded server, holding this fake's state."""


# Handler -------------------------------------------------------------------------------------------------


class _Handler(TrackingHandler):
    server_version = "stillpoint-supabase-storage/1.0"
    server: _HTTPServer

    @property
    def _state(self) -> _StorageState:
        return self.server.state

    def _dispatch(self, method: str) -> None:
        split = urllib.parse.urlsplit(self.path)
        self._query = urllib.parse.parse_qs(split.query)
        self._recorded = ReceivedRequest(
            method=method,
            path=split.path,
            headers={
                name: value for name in RECORDED_HEADERS if (value := self.headers.get(name)) is not None
            },
            has_credentials="authorization" in self.headers or "apikey" in self.headers,
        )
        self._state.record(self._recorded)
        self._has_answered = False
        is_tus = split.path.startswith(f"{API_PREFIX}upload/resumable")
        try:
            body = self._read_body()
            is_failing, failure_status = self._state.take_failure(split.path)
            if is_failing:
                if failure_status is None:
                    raise _HangupError
                raise _StorageError(
                    failure_status, "ServiceUnavailable", "ServiceUnavailable", "injected failure"
                )
            if not split.path.startswith(API_PREFIX):
                raise _StorageError(404, "NotFound", "Not Found", f"Route {method}:{split.path} not found")
            segments = [urllib.parse.unquote(part) for part in split.path[len(API_PREFIX) :].split("/")]
            if is_tus:
                self._tus(method, segments[2:], body)
            else:
                self._api(method, segments, body)
        except _StorageError as error:
            # The object API hides the status in the body; the TUS routes answer with it, as tus-node does.
            status = error.status_code if is_tus or error.status_code >= 500 else 400
            self._send_json(status, error.body, error.headers)
        except (_HangupError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            traceback.print_exc()
            self.close_connection = True
            if not self._has_answered:
                self._send_json(
                    500, {"statusCode": "500", "error": "Internal", "message": "Internal Server Error"}
                )

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            pieces: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(pieces)
                pieces.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorize(self) -> None:
        """Like Storage behind the gateway: the service key as a bearer token, or as `apikey` alone."""
        authorization = self.headers.get("Authorization")
        if authorization is not None:
            provided = _BEARER.sub("", authorization)
        else:
            provided = self.headers.get("apikey", "")
        if not provided:
            raise _access_denied("jwt must be provided")
        if not hmac.compare_digest(provided.encode(), self._state.service_key.encode()):
            raise _access_denied("invalid signature")

    # Object API ------------------------------------------------------------------------------------------

    def _api(self, method: str, segments: list[str], body: bytes) -> None:
        head, rest = segments[0], segments[1:]
        if head == "bucket":
            self._authorize()
            self._buckets(method, rest, body)
        elif head == "object" and rest:
            self._objects(method, rest, body)
        else:
            raise _StorageError(
                404, "NotFound", "Not Found", f"Route {method}:{self._recorded.path} not found"
            )

    def _buckets(self, method: str, rest: list[str], body: bytes) -> None:
        if method == "POST" and not rest:
            payload = _json_object(body)
            bucket_id = payload.get("id") or payload.get("name")
            if not isinstance(bucket_id, str) or not _BUCKET_NAME.fullmatch(bucket_id):
                raise _StorageError(400, "InvalidBucketName", "Invalid Input", "Bucket name invalid")
            name = payload.get("name")
            size_limit = payload.get("file_size_limit")
            mime_types = payload.get("allowed_mime_types")
            self._state.create_bucket(
                _Bucket(
                    id=bucket_id,
                    name=name if isinstance(name, str) else bucket_id,
                    is_public=payload.get("public") is True,
                    file_size_limit=size_limit if isinstance(size_limit, int) else None,
                    allowed_mime_types=[str(t) for t in mime_types] if isinstance(mime_types, list) else None,
                    created_at=datetime.now(UTC),
                )
            )
            self._send_json(200, {"name": bucket_id})
        elif method == "GET" and not rest:
            self._send_json(200, [bucket.to_json_object() for bucket in self._state.buckets()])
        elif method == "GET" and len(rest) == 1:
            self._send_json(200, self._state.bucket(rest[0]).to_json_object())
        else:
            raise _StorageError(
                404, "NotFound", "Not Found", f"Route {method}:{self._recorded.path} not found"
            )

    def _objects(self, method: str, rest: list[str], body: bytes) -> None:
        kind = rest[0]
        if kind == "sign" and method == "GET":
            bucket, name = self._bucket_and_name(rest[1:])
            self._serve_signed(bucket, name)
            return
        if kind == "public" and method in ("GET", "HEAD"):
            bucket, name = self._bucket_and_name(rest[1:])
            if not self._state.bucket(bucket).is_public:
                raise _no_such_key()
            self._serve(self._state.find_object(bucket, name), method, {})
            return
        self._authorize()
        if kind == "sign" and method == "POST":
            if len(rest) == 2:
                self._sign_many(rest[1], body)
            else:
                self._sign(*self._bucket_and_name(rest[1:]), body)
        elif kind == "list" and method == "POST" and len(rest) == 2:
            self._list(rest[1], body)
        elif kind == "info":
            where = rest[2:] if len(rest) > 1 and rest[1] in ("authenticated", "public") else rest[1:]
            self._send_json(200, self._state.find_object(*self._bucket_and_name(where)).to_json_object())
        elif kind == "authenticated" and method in ("GET", "HEAD"):
            self._serve(self._state.find_object(*self._bucket_and_name(rest[1:])), method, {})
        elif method in ("GET", "HEAD"):
            self._serve(self._state.find_object(*self._bucket_and_name(rest)), method, {})
        elif method in ("POST", "PUT"):
            self._upload(method, *self._bucket_and_name(rest), body)
        elif method == "DELETE" and len(rest) == 1:
            self._delete_many(rest[0], body)
        elif method == "DELETE":
            bucket, name = self._bucket_and_name(rest)
            self._state.find_object(bucket, name)
            self._state.delete_object(bucket, name)
            self._send_json(200, {"message": "Successfully deleted"})
        else:
            raise _StorageError(
                404, "NotFound", "Not Found", f"Route {method}:{self._recorded.path} not found"
            )

    def _bucket_and_name(self, rest: list[str]) -> tuple[str, str]:
        if len(rest) < 2:
            raise _StorageError(400, "InvalidKey", "InvalidKey", "Invalid key: ")
        bucket, name = rest[0], "/".join(rest[1:])
        _validate_object_name(name)
        return bucket, name

    def _upload(self, method: str, bucket_id: str, name: str, body: bytes) -> None:
        # The simulated network time of the upload (upload_latency), not synchronisation.
        time.sleep(self._state.draw_upload_latency_seconds(len(body)))
        bucket = self._state.bucket(bucket_id)
        content_type_header = self.headers.get("Content-Type", "")
        if content_type_header.lower().startswith("multipart/form-data"):
            form = _parse_multipart(content_type_header, body)
            self._record_form(form)
            file_part = form.get("file") or next((p for p in form.values() if p.filename is not None), None)
            if file_part is None:
                raise _StorageError(400, "InvalidRequest", "InvalidRequest", "No content provided")
            data = file_part.data
            content_type = file_part.content_type or "text/plain;charset=UTF-8"
            cache_part = form.get("cacheControl")
            cache_control = cache_part.data.decode() if cache_part is not None else "no-cache"
        else:
            data = body
            content_type = content_type_header or "text/plain;charset=UTF-8"
            cache_control = self.headers.get("Cache-Control", "no-cache")
        _check_bucket_limits(bucket, len(data), content_type)
        is_upsert = method == "PUT" or self.headers.get("x-upsert", "").lower() == "true"
        if not is_upsert and self._state.object_exists(bucket_id, name):
            raise _duplicate()
        incoming = self._state.incoming_path()
        incoming.write_bytes(data)
        stored = self._state.commit_object(
            bucket_id, name, incoming, content_type, _max_age(cache_control), is_upsert
        )
        self._send_json(200, {"Id": stored.id, "Key": f"{bucket_id}/{name}"})

    def _record_form(self, form: Mapping[str, _FormPart]) -> None:
        recorded: dict[str, str] = {}
        for name, part in form.items():
            if part.filename is None:
                recorded[name] = part.data.decode("utf-8", "replace")
            else:
                recorded[f"{name}.content-type"] = part.content_type or ""
        self._recorded.form = recorded

    def _sign(self, bucket: str, name: str, body: bytes) -> None:
        expires_in = _expires_in(_json_object(body))
        self._state.find_object(bucket, name)
        self._send_json(200, {"signedURL": self._signed_path(bucket, name, expires_in)})

    def _sign_many(self, bucket: str, body: bytes) -> None:
        payload = _json_object(body)
        expires_in = _expires_in(payload)
        paths = payload.get("paths")
        if not isinstance(paths, list):
            raise _StorageError(
                400, "InvalidRequest", "InvalidRequest", "body must have required property 'paths'"
            )
        self._state.bucket(bucket)
        signed: list[dict[str, object]] = []
        for path in paths:
            name = str(path)
            if self._state.object_exists(bucket, name):
                url = self._signed_path(bucket, name, expires_in)
                signed.append({"error": None, "path": name, "signedURL": url})
            else:
                missing = "Either the object does not exist or you do not have access to it"
                signed.append({"error": missing, "path": name, "signedURL": None})
        self._send_json(200, signed)

    def _signed_path(self, bucket: str, name: str, expires_in: int) -> str:
        issued_at = int(self._state.clock())
        token = _sign_token(
            self._state.signing_secret,
            {"url": f"{bucket}/{name}", "iat": issued_at, "exp": issued_at + expires_in},
        )
        quoted = urllib.parse.quote(f"{bucket}/{name}")
        return f"/object/sign/{quoted}?token={token}"

    def _serve_signed(self, bucket: str, name: str) -> None:
        tokens = self._query.get("token")
        if not tokens:
            raise _StorageError(
                400, "InvalidRequest", "Error", "querystring must have required property 'token'"
            )
        claims = _verify_token(self._state.signing_secret, tokens[0], now=self._state.clock())
        if claims.get("url") != f"{bucket}/{name}":
            raise _StorageError(
                400, "InvalidSignature", "InvalidSignature", "The url do not match the signature"
            )
        extra: dict[str, str] = {}
        if (download := self._query.get("download")) is not None:
            filename = download[0] or name.rsplit("/", 1)[-1]
            extra["Content-Disposition"] = f"attachment; filename={urllib.parse.quote(filename)}"
        self._serve(self._state.find_object(bucket, name), "GET", extra)

    def _list(self, bucket: str, body: bytes) -> None:
        """POST /object/list/{bucket}: what lies directly under `prefix`, as Storage lists a folder: objects
        by their name within it, sub-folders once each with a null id, sorted by name, `offset` and `limit`
        applied."""
        request = _json_object(body)
        prefix = str(request.get("prefix", "")).strip("/")
        limit, offset = int(str(request.get("limit", 100))), int(str(request.get("offset", 0)))
        self._state.bucket(bucket)
        under = f"{prefix}/" if prefix else ""
        entries: dict[str, dict[str, object]] = {}
        for name in self._state.object_names(bucket):
            if not name.startswith(under):
                continue
            rest = name[len(under) :]
            if "/" in rest:
                folder = rest.split("/", 1)[0]
                entries.setdefault(folder, {"name": folder, "id": None, "metadata": None})
            else:
                entries[rest] = {**self._state.find_object(bucket, name).to_json_object(), "name": rest}
        listed = [entries[name] for name in sorted(entries)][offset : offset + limit]
        self._send_json(200, listed)

    def _delete_many(self, bucket: str, body: bytes) -> None:
        prefixes = _json_object(body).get("prefixes")
        if not isinstance(prefixes, list):
            raise _StorageError(
                400, "InvalidRequest", "InvalidRequest", "body must have required property 'prefixes'"
            )
        self._state.bucket(bucket)
        removed = [self._state.delete_object(bucket, str(prefix)) for prefix in prefixes]
        self._send_json(200, [stored.to_json_object() for stored in removed if stored is not None])

    def _serve(self, stored: _StoredObject, method: str, extra_headers: Mapping[str, str]) -> None:
        start, end = 0, stored.size_bytes - 1
        status = 200
        headers = {
            "Content-Type": stored.content_type,
            "Cache-Control": stored.cache_control,
            "ETag": stored.etag,
            "Last-Modified": format_datetime(stored.created_at, usegmt=True),
            "Accept-Ranges": "bytes",
            **extra_headers,
        }
        requested = _RANGE.fullmatch(self.headers.get("Range", "").strip())
        if requested is not None and stored.size_bytes > 0 and any(requested.groups()):
            first, last = requested.groups()
            if first:
                start, end = int(first), min(int(last), end) if last else end
            else:
                start = max(0, stored.size_bytes - int(last))
            if start > end:
                raise _StorageError(416, "InvalidRange", "invalid_range", "invalid range provided")
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{stored.size_bytes}"
        length = max(0, end - start + 1)
        self._mark(status)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if method == "HEAD":
            return
        with open(stored.data_path, "rb") as stream:
            stream.seek(start)
            remaining = length
            while remaining > 0:
                chunk = stream.read(min(_COPY_CHUNK_BYTES, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    # TUS resumable uploads ---------------------------------------------------------------------------------

    def _tus(self, method: str, rest: list[str], body: bytes) -> None:
        if method == "OPTIONS":
            self._send_empty(
                204,
                {
                    "Tus-Resumable": TUS_VERSION,
                    "Tus-Version": TUS_VERSION,
                    "Tus-Extension": "creation,creation-with-upload,termination",
                },
            )
            return
        if self.headers.get("Tus-Resumable") != TUS_VERSION:
            error = _StorageError(412, "TusError", "TusError", "Unsupported version")
            error.headers["Tus-Version"] = TUS_VERSION
            raise error
        self._authorize()
        if method == "POST" and not rest:
            self._tus_create(body)
            return
        if len(rest) != 1 or not rest[0]:
            raise _StorageError(
                404, "NotFound", "Not Found", f"Route {method}:{self._recorded.path} not found"
            )
        upload = self._state.upload(rest[0])
        if method == "HEAD":
            self._send_empty(
                200,
                {
                    "Tus-Resumable": TUS_VERSION,
                    "Upload-Offset": str(upload.offset),
                    "Upload-Length": str(upload.length),
                    "Cache-Control": "no-store",
                },
            )
        elif method == "PATCH":
            # The simulated network time of the chunk (upload_latency), not synchronisation.
            time.sleep(self._state.draw_upload_latency_seconds(len(body)))
            self._tus_append(upload, body, is_creation=False)
            self._send_empty(204, {"Tus-Resumable": TUS_VERSION, "Upload-Offset": str(upload.offset)})
        elif method == "DELETE":
            self._state.remove_upload(upload.id)
            self._send_empty(204, {"Tus-Resumable": TUS_VERSION})
        else:
            raise _StorageError(
                404, "NotFound", "Not Found", f"Route {method}:{self._recorded.path} not found"
            )

    def _tus_create(self, body: bytes) -> None:
        length_header = self.headers.get("Upload-Length")
        if length_header is None or not length_header.isdigit():
            raise _StorageError(
                400, "TusError", "TusError", "Upload-Length or Upload-Defer-Length header required"
            )
        metadata = _parse_upload_metadata(self.headers.get("Upload-Metadata", ""))
        bucket_id, name = metadata.get("bucketName"), metadata.get("objectName")
        if not bucket_id or not name:
            raise _StorageError(400, "InvalidRequest", "InvalidRequest", "Metadata header is required")
        _validate_object_name(name)
        bucket = self._state.bucket(bucket_id)
        length = int(length_header)
        content_type = metadata.get("contentType") or "application/octet-stream"
        _check_bucket_limits(bucket, length, content_type)
        is_upsert = self.headers.get("x-upsert", "").lower() == "true"
        if not is_upsert and self._state.object_exists(bucket_id, name):
            raise _duplicate()
        # Like Storage: the id names the object and a version, so it can be resumed from anywhere.
        version = uuid.uuid4().hex
        upload_id = base64.urlsafe_b64encode(f"{bucket_id}/{name}/{version}".encode()).decode().rstrip("=")
        upload = _Upload(
            id=upload_id,
            bucket=bucket_id,
            name=name,
            length=length,
            content_type=content_type,
            cache_control=_max_age(metadata.get("cacheControl") or "3600"),
            is_upsert=is_upsert,
            data_path=self._state.root / "uploads" / version,
        )
        upload.data_path.touch()
        self._state.add_upload(upload)
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Location": f"{self._origin()}{API_PREFIX}upload/resumable/{upload_id}",
        }
        if body and self.headers.get("Content-Type") == TUS_CONTENT_TYPE:
            self._tus_append(upload, body, is_creation=True)
            headers["Upload-Offset"] = str(upload.offset)
        elif length == 0:
            self._tus_append(upload, b"", is_creation=True)
        self._send_empty(201, headers)

    def _tus_append(self, upload: _Upload, body: bytes, is_creation: bool) -> None:
        if not is_creation:
            if self.headers.get("Content-Type") != TUS_CONTENT_TYPE:
                raise _StorageError(415, "TusError", "TusError", "Invalid or missing content-type header")
            offset_header = self.headers.get("Upload-Offset")
            if offset_header is None or not offset_header.isdigit():
                raise _StorageError(400, "TusError", "TusError", "Upload-Offset header required")
            offset = int(offset_header)
        else:
            offset = 0
        with upload.lock:
            if offset != upload.offset:
                raise _StorageError(409, "TusError", "TusError", "Upload-Offset conflict")
            if upload.offset + len(body) > upload.length:
                raise _StorageError(413, "TusError", "TusError", "Maximum size exceeded")
            if upload.is_complete:
                return
            is_interrupted = not is_creation and bool(body) and self._state.take_patch_interruption()
            kept = body[: len(body) // 2] if is_interrupted else body
            with open(upload.data_path, "ab") as stream:
                stream.write(kept)
            upload.offset += len(kept)
            if is_interrupted:
                raise _HangupError
            if upload.offset == upload.length:
                upload.is_complete = True
                try:
                    self._state.commit_object(
                        upload.bucket,
                        upload.name,
                        upload.data_path,
                        upload.content_type,
                        upload.cache_control,
                        upload.is_upsert,
                    )
                except _StorageError:
                    self._state.remove_upload(upload.id)
                    raise

    def _origin(self) -> str:
        host = self.headers.get("Host")
        if not host:
            address, port = self.server.server_address[:2]
            host = f"{_url_host(str(address))}:{port}"
        return f"http://{host}"

    # Responses ---------------------------------------------------------------------------------------------

    def _mark(self, status: int) -> None:
        self._has_answered = True
        self._state.set_status(self._recorded, status)

    def _send_json(self, status: int, body: object, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._mark(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_empty(self, status: int, headers: Mapping[str, str]) -> None:
        self._mark(status)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Length", "0")
        self.end_headers()


# Helpers ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FormPart:
    data: bytes
    content_type: str | None
    filename: str | None


def _parse_multipart(content_type: str, body: bytes) -> dict[str, _FormPart]:
    """Splits a multipart/form-data body exactly, so binary file bytes come through untouched."""
    boundary = _header_parameter(content_type, "boundary")
    if not boundary:
        raise _StorageError(400, "InvalidRequest", "InvalidRequest", "multipart body without a boundary")
    parts: dict[str, _FormPart] = {}
    for section in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if section.startswith(b"--"):
            break
        header_end = section.find(b"\r\n\r\n")
        if not section.startswith(b"\r\n") or header_end < 0 or not section.endswith(b"\r\n"):
            raise _StorageError(400, "InvalidRequest", "InvalidRequest", "malformed multipart body")
        headers: dict[str, str] = {}
        for line in section[2:header_end].decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        part_name = _header_parameter(disposition, "name")
        if part_name is not None:
            parts[part_name] = _FormPart(
                data=section[header_end + 4 : -2],
                content_type=headers.get("content-type"),
                filename=_header_parameter(disposition, "filename"),
            )
    return parts


def _header_parameter(value: str, name: str) -> str | None:
    found = re.search(
        rf';\s*{re.escape(name)}="([^"]*)"|;\s*{re.escape(name)}=([^;\s]+)', value, re.IGNORECASE
    )
    if found is None:
        return None
    return found.group(1) if found.group(1) is not None else found.group(2)


def _parse_upload_metadata(header: str) -> dict[str, str]:
    """TUS Upload-Metadata: comma-separated `key base64(value)` pairs; a key may come without a value."""
    metadata: dict[str, str] = {}
    for pair in filter(None, (item.strip() for item in header.split(","))):
        key, _, encoded = pair.partition(" ")
        try:
            metadata[key] = base64.b64decode(encoded.strip(), validate=True).decode() if encoded else ""
        except (binascii.Error, UnicodeDecodeError) as error:
            raise _StorageError(400, "TusError", "TusError", "Upload-Metadata is invalid") from error
    return metadata


def _validate_object_name(name: str) -> None:
    segments = name.split("/")
    if not name or any(s in ("", ".", "..") for s in segments) or "\\" in name or "\x00" in name:
        raise _StorageError(400, "InvalidKey", "InvalidKey", f"Invalid key: {name}")


def _check_bucket_limits(bucket: _Bucket, size_bytes: int, content_type: str) -> None:
    if bucket.file_size_limit is not None and size_bytes > bucket.file_size_limit:
        raise _StorageError(
            413, "EntityTooLarge", "Payload too large", "The object exceeded the maximum allowed size"
        )
    if bucket.allowed_mime_types is not None:
        mime_type = content_type.split(";", 1)[0].strip()
        if mime_type not in bucket.allowed_mime_types:
            raise _StorageError(
                415, "InvalidMimeType", "invalid_mime_type", f"mime type {content_type} is not supported"
            )


def _max_age(cache_control: str) -> str:
    """Storage keeps a bare number of seconds as `max-age=N`, and serves it so."""
    value = cache_control.strip()
    return f"max-age={value}" if value.isdigit() else value


def _expires_in(payload: Mapping[str, object]) -> int:
    value = payload.get("expiresIn")
    if isinstance(value, int | str) and str(value).isdigit() and int(value) >= 1:
        return int(value)
    raise _StorageError(400, "InvalidParameter", "InvalidParameter", "Invalid Parameter expiresIn")


def _json_object(body: bytes) -> dict[str, object]:
    try:
        payload = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _StorageError(400, "InvalidRequest", "InvalidRequest", "Body is not valid JSON") from error
    if not isinstance(payload, dict):
        raise _StorageError(400, "InvalidRequest", "InvalidRequest", "body must be object")
    return payload


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_JWT_HEADER: Final = _b64url(b'{"alg":"HS256","typ":"JWT"}')


def _sign_token(secret: bytes, claims: Mapping[str, object]) -> str:
    """An HS256 JWT, as Storage signs download URLs: `url` is bucket/name, `exp` the expiry in seconds."""
    signing_input = f"{_JWT_HEADER}.{_b64url(json.dumps(claims, separators=(',', ':')).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def _verify_token(secret: bytes, token: str, *, now: float) -> dict[str, object]:
    pieces = token.split(".")
    if len(pieces) != 3:
        raise _invalid_jwt("jwt malformed")
    try:
        signature = _b64url_decode(pieces[2])
        claims = json.loads(_b64url_decode(pieces[1]))
    except (binascii.Error, ValueError) as error:
        raise _invalid_jwt("invalid token") from error
    expected = hmac.new(secret, f"{pieces[0]}.{pieces[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected) or not isinstance(claims, dict):
        raise _invalid_jwt("invalid signature")
    expiry = claims.get("exp")
    if not isinstance(expiry, int) or now >= expiry:
        raise _invalid_jwt("jwt expired")
    return claims


def _no_such_bucket() -> _StorageError:
    return _StorageError(404, "NoSuchBucket", "Bucket not found", "Bucket not found")


def _no_such_key() -> _StorageError:
    return _StorageError(404, "NoSuchKey", "not_found", "Object not found")


def _duplicate() -> _StorageError:
    return _StorageError(409, "KeyAlreadyExists", "Duplicate", "The resource already exists")


def _access_denied(message: str) -> _StorageError:
    return _StorageError(403, "AccessDenied", "Unauthorized", message)


def _invalid_jwt(message: str) -> _StorageError:
    return _StorageError(400, "InvalidJWT", "InvalidJWT", message)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _latency_range(text: str) -> tuple[float, float]:
    """Parses `MIN,MAX` seconds for --upload-latency."""
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
    parser.add_argument("--service-key", default=DEFAULT_SERVICE_KEY)
    parser.add_argument(
        "--upload-latency",
        type=_latency_range,
        default=None,
        metavar="MIN,MAX",
        help="seconds each object upload and TUS PATCH takes, drawn uniformly (seeded)",
    )
    parser.add_argument("--upload-latency-seed", type=int, default=0)
    parser.add_argument(
        "--upload-latency-scale-by-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help="the upload latency is for an upload of this size and scales with each upload's size",
    )
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
        print(f"listening on {server.url}", flush=True)
        while not stop_requested.wait(0.5):
            pass


if __name__ == "__main__":
    main()
