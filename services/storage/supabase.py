"""Asset storage in Supabase Storage: a private bucket, TUS for large files, signed URLs for clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
import random
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Self, TypeVar

import httpx
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError
from storage3.types import FileOptions

from services import metrics
from services.storage.base import AssetMissingError, StorageUnavailableError, StoredAsset, validate_key

_LOG = logging.getLogger(__name__)

MEBIBYTE: Final = 1 << 20
# Supabase advises TUS above about 6 MB, and requires every TUS chunk but the last to be exactly 6 MiB.
DEFAULT_RESUMABLE_THRESHOLD_BYTES: Final = 6 * MEBIBYTE
DEFAULT_CHUNK_BYTES: Final = 6 * MEBIBYTE
DEFAULT_SIGNED_URL_EXPIRY_SECONDS: Final = 3600
DEFAULT_TIMEOUT_SECONDS: Final = 60.0
# Keys are new for every asset and never overwritten, so every cache may keep an asset for a year.
CACHE_CONTROL_SECONDS: Final = "31536000"

_TUS_VERSION: Final = "1.0.0"
_DOWNLOAD_CHUNK_BYTES: Final = MEBIBYTE
_SIGNED_URI_MEMO_SIZE: Final = 4096

ChunkReader = Callable[[int, int], Awaitable[bytes]]
_T = TypeVar("_T")


@dataclass(frozen=True)
class StorageRetryPolicy:
    """The one retry policy of every Supabase Storage request: how often a transient failure (a 5xx, a 429, a
    lost connection, a timeout) is tried again, and how long to wait in between. Refusals (other 4xx) are
    never retried: asking again gets the same answer.

    The waits stay short (a few seconds in all) so that retries fit inside a pipeline stage's deadline; an
    outage longer than that fails the job's attempt, and the job's own retry policy takes over.
    """

    # Tries of one request in all, the first included; at least 1.
    attempts: int = 4
    first_delay_seconds: float = 0.25
    max_delay_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay_seconds < 0 or self.max_delay_seconds < 0:
            raise ValueError("a retry policy needs at least one attempt and delays that are not negative")

    def delay_seconds(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row: exponential, capped, with jitter so that many
        uploads cut by one outage do not all come back at the same instant."""
        ceiling = min(self.first_delay_seconds * 2 ** (failures - 1), self.max_delay_seconds)
        return random.uniform(ceiling / 2, ceiling)


DEFAULT_RETRY_POLICY: Final = StorageRetryPolicy()


# Objects listed per request when a folder is emptied.
_LIST_PAGE_SIZE = 100


class SupabaseAssetStorage:
    """Keeps assets in a private Supabase Storage bucket; clients fetch them through signed URLs.

    Make one per process with `await SupabaseAssetStorage.create(...)` inside the running event loop, and
    `await aclose()` it at shutdown.
    """

    def __init__(
        self,
        url: str,
        service_key: str,
        bucket: str,
        *,
        cache_dir: Path,
        signed_url_expiry_seconds: int = DEFAULT_SIGNED_URL_EXPIRY_SECONDS,
        resumable_threshold_bytes: int = DEFAULT_RESUMABLE_THRESHOLD_BYTES,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        retry_policy: StorageRetryPolicy = DEFAULT_RETRY_POLICY,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("the Supabase URL must start with http:// or https://")
        if not service_key:
            raise ValueError("the Supabase service key is empty")
        if not bucket:
            raise ValueError("the bucket name is empty")
        if signed_url_expiry_seconds < 1 or chunk_bytes < 1 or resumable_threshold_bytes < 0:
            raise ValueError("expiry and chunk size must be positive, the resumable threshold not negative")
        self._storage_url = f"{url.rstrip('/')}/storage/v1/"
        self._bucket = bucket
        self._cache_root = cache_dir.resolve() / bucket
        self._signed_url_expiry_seconds = signed_url_expiry_seconds
        self._resumable_threshold_bytes = resumable_threshold_bytes
        self._chunk_bytes = chunk_bytes
        self._retry_policy = retry_policy
        credentials = {"apikey": service_key, "Authorization": f"Bearer {service_key}"}
        # One connection pool for storage3 and for what it lacks (TUS, streamed downloads).
        self._http = httpx.AsyncClient(headers=credentials, timeout=httpx.Timeout(timeout_seconds))
        self._client = AsyncStorageClient(self._storage_url, credentials, http_client=self._http)
        self._signed: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._download_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    async def create(
        cls,
        url: str,
        service_key: str,
        bucket: str,
        *,
        cache_dir: Path,
        signed_url_expiry_seconds: int = DEFAULT_SIGNED_URL_EXPIRY_SECONDS,
        resumable_threshold_bytes: int = DEFAULT_RESUMABLE_THRESHOLD_BYTES,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        retry_policy: StorageRetryPolicy = DEFAULT_RETRY_POLICY,
    ) -> SupabaseAssetStorage:
        """Makes the client inside the running loop and makes sure the (private) bucket exists."""
        storage = cls(
            url,
            service_key,
            bucket,
            cache_dir=cache_dir,
            signed_url_expiry_seconds=signed_url_expiry_seconds,
            resumable_threshold_bytes=resumable_threshold_bytes,
            chunk_bytes=chunk_bytes,
            timeout_seconds=timeout_seconds,
            retry_policy=retry_policy,
        )
        try:
            await storage._ensure_bucket()
        except BaseException:
            await storage.aclose()
            raise
        return storage

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"SupabaseAssetStorage(url={self._storage_url!r}, bucket={self._bucket!r})"

    @property
    def bucket(self) -> str:
        """The bucket assets are kept in."""
        return self._bucket

    # AssetStorage -------------------------------------------------------------------------------------------

    async def put_file(
        self, key: str, source_path: Path, content_type: str, *, signed: bool = True, read_back: bool = False
    ) -> StoredAsset:
        """Uploads a local file; above the resumable threshold it goes by TUS, read chunk by chunk. With
        `read_back`, a copy goes into the download cache once it is stored."""
        _check_upload(key, content_type)
        size_bytes = (await asyncio.to_thread(source_path.stat)).st_size
        if size_bytes > self._resumable_threshold_bytes:
            stream = await asyncio.to_thread(open, source_path, "rb")
            try:
                await self._upload_resumable(key, size_bytes, content_type, _file_reader(stream))
            finally:
                await asyncio.to_thread(stream.close)
        else:
            data = await asyncio.to_thread(source_path.read_bytes)
            size_bytes = len(data)
            await self._upload_standard(key, data, content_type)
        if read_back:
            await asyncio.to_thread(self._keep_copy, key, lambda target: shutil.copyfile(source_path, target))
        return await self._stored(key, size_bytes, content_type, signed)

    async def put_bytes(
        self, key: str, data: bytes, content_type: str, *, signed: bool = True, read_back: bool = False
    ) -> StoredAsset:
        """Uploads bytes; above the resumable threshold they go by TUS. With `read_back`, a copy goes into
        the download cache once they are stored."""
        _check_upload(key, content_type)
        if len(data) > self._resumable_threshold_bytes:
            await self._upload_resumable(key, len(data), content_type, _bytes_reader(data))
        else:
            await self._upload_standard(key, data, content_type)
        if read_back:
            await asyncio.to_thread(self._keep_copy, key, lambda target: target.write_bytes(data))
        return await self._stored(key, len(data), content_type, signed)

    async def put_mutable_bytes(
        self, key: str, data: bytes, content_type: str, *, signed: bool = True
    ) -> StoredAsset:
        """Writes an object that is rewritten in place (a live playlist): upserted, and never cached long,
        so players polling it see each new version."""
        _check_upload(key, content_type)
        options: FileOptions = {"content-type": content_type, "cache-control": "0", "upsert": "true"}
        # An upsert: trying it again after a lost answer writes the same bytes once more.
        await self._retried(
            "store a live object", lambda: self._client.from_(self._bucket).upload(key, data, options)
        )
        return await self._stored(key, len(data), content_type, signed)

    async def local_path(self, key: str) -> Path:
        """Downloads the asset into the cache folder once; later calls reuse the cached copy.

        A cached copy never goes stale: keys are never overwritten.
        """
        target = self._cache_root / validate_key(key)
        if await asyncio.to_thread(target.is_file):
            return target
        lock = self._download_locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                if not await asyncio.to_thread(target.is_file):
                    # Each try streams into a fresh temporary file, so a cut download starts over cleanly.
                    await self._retried("fetch an asset", lambda: self._download(key, target), key)
        finally:
            # At worst a caller arriving just now downloads again; the atomic rename keeps that harmless.
            if not lock.locked():
                self._download_locks.pop(key, None)
        return target

    async def exists(self, key: str) -> bool:
        """Asks Storage for the object's info."""
        validate_key(key)
        return await self._retried("check for an asset", lambda: self._client.from_(self._bucket).exists(key))

    async def delete(self, key: str) -> bool:
        """Removes the object and this process's downloaded copy; Storage answers a missing one with an
        empty list, which is not an error."""
        validate_key(key)
        # Removal converges: a retry after a lost answer removes nothing more.
        removed = await self._retried(
            "remove an asset", lambda: self._client.from_(self._bucket).remove([key])
        )
        (self._cache_root / key).unlink(missing_ok=True)
        self._signed.pop(key, None)
        return bool(removed)

    async def prefix_size(self, prefix: str) -> int:
        """Adds up the sizes Storage lists for the folder's objects, a page at a time."""
        validate_key(prefix)
        total, offset = 0, 0
        while True:
            listed = await self._retried(
                "list a job's assets",
                functools.partial(
                    self._client.from_(self._bucket).list,
                    prefix,
                    {"limit": _LIST_PAGE_SIZE, "offset": offset},
                ),
            )
            for entry in listed:
                metadata = entry.get("metadata") or {}
                if entry.get("id") and isinstance(metadata.get("size"), int):
                    total += metadata["size"]
            if len(listed) < _LIST_PAGE_SIZE:
                return total
            offset += len(listed)

    async def delete_prefix(self, prefix: str) -> int:
        """Removes every object directly under `prefix` (one job's folder) and returns how many.

        Storage lists a page at a time (100 by default; a live preview alone has more segments than that), so
        this lists and removes until a listing comes back empty; what was removed is not listed again."""
        validate_key(prefix)
        removed: set[str] = set()
        while True:
            listed = await self._retried(
                "list a job's assets",
                lambda: self._client.from_(self._bucket).list(prefix, {"limit": _LIST_PAGE_SIZE}),
            )
            # A sub-folder is listed with no id; a job's folder has none, and it could not be removed anyway.
            names = [f"{prefix}/{entry['name']}" for entry in listed if entry.get("name") and entry.get("id")]
            if not names:
                return len(removed)
            if removed.intersection(names):
                # Removal answered but kept them (a policy refusing deletes): stop rather than loop forever.
                raise StorageUnavailableError("Supabase Storage kept assets it was asked to remove")
            await self._retried(
                "remove a job's assets", functools.partial(self._client.from_(self._bucket).remove, names)
            )
            for name in names:
                (self._cache_root / name).unlink(missing_ok=True)
            removed.update(names)

    def uri(self, key: str) -> str:
        """The signed URL made for `key` by `put_*` or `signed_uri` in this process, while at least half its
        lifetime is left. Signing needs a request, so this synchronous call cannot: await `signed_uri`."""
        validate_key(key)
        remembered = self._signed.get(key)
        if remembered is None or remembered[1] <= time.monotonic():
            raise StorageUnavailableError(
                "no fresh signed URL is held for this asset in this process; await signed_uri(key) for one"
            )
        return remembered[0]

    async def signed_uri(self, key: str) -> str:
        """A URL anyone holding it can download the asset from, without credentials, until it expires."""
        validate_key(key)
        signed = await self._retried(
            "sign a download URL",
            lambda: self._client.from_(self._bucket).create_signed_url(key, self._signed_url_expiry_seconds),
            key,
        )
        url = signed["signedURL"]
        if not url:
            raise StorageUnavailableError("Supabase Storage answered without a signed URL")
        self._signed[key] = (url, time.monotonic() + self._signed_url_expiry_seconds / 2)
        self._signed.move_to_end(key)
        while len(self._signed) > _SIGNED_URI_MEMO_SIZE:
            self._signed.popitem(last=False)
        return url

    async def signed_uris(self, keys: Sequence[str]) -> list[str]:
        """Signs every key in one request; an empty string for a key Storage has no object for."""
        for key in keys:
            validate_key(key)
        if not keys:
            return []
        signed = await self._retried(
            "sign download URLs",
            lambda: self._client.from_(self._bucket).create_signed_urls(
                list(keys), self._signed_url_expiry_seconds
            ),
        )
        by_key = {item["path"]: url for item in signed if (url := item.get("signedURL"))}
        remembered_until = time.monotonic() + self._signed_url_expiry_seconds / 2
        for key, url in by_key.items():
            self._signed[key] = (url, remembered_until)
            self._signed.move_to_end(key)
        while len(self._signed) > _SIGNED_URI_MEMO_SIZE:
            self._signed.popitem(last=False)
        return [by_key.get(key, "") for key in keys]

    # Uploads ------------------------------------------------------------------------------------------------

    def _file_options(self, content_type: str) -> FileOptions:
        # Values are strings; "upsert" false because assets get new keys rather than overwrites.
        return {"content-type": content_type, "cache-control": CACHE_CONTROL_SECONDS, "upsert": "false"}

    async def _upload_standard(self, key: str, data: bytes, content_type: str) -> None:
        tries = 0

        async def upload() -> None:
            nonlocal tries
            tries += 1
            try:
                await self._client.from_(self._bucket).upload(key, data, self._file_options(content_type))
            except StorageApiError as error:
                # Keys are new for every asset, so a Duplicate answering a retry is the earlier try having
                # landed after its answer was lost (a timeout, a cut connection): the asset is stored.
                if tries > 1 and _status_code(error.status) == 409 and error.code == "Duplicate":
                    _LOG.info("an upload retried after a lost answer had already landed")
                    return
                raise

        await self._retried("store an asset", upload)

    async def _retried(self, action: str, attempt: Callable[[], Awaitable[_T]], key: str | None = None) -> _T:
        """Runs one Storage request under the retry policy: transient failures are tried again after a
        backoff, everything else (and the last failure) is raised as `_translated` words it."""
        failures = 0
        while True:
            try:
                with _translated(action, key):
                    return await attempt()
            except StorageUnavailableError as error:
                failures += 1
                if failures >= self._retry_policy.attempts or not _is_transient(error):
                    raise
                delay_seconds = self._retry_policy.delay_seconds(failures)
                _LOG.warning(
                    "%s (try %d of %d); trying again in %.2fs",
                    error,
                    failures,
                    self._retry_policy.attempts,
                    delay_seconds,
                )
                await asyncio.sleep(delay_seconds)

    async def _upload_resumable(
        self, key: str, size_bytes: int, content_type: str, read: ChunkReader
    ) -> None:
        """TUS 1.0.0 as Supabase implements it; a lost connection resumes from the offset the server holds."""
        metadata = {
            "bucketName": self._bucket,
            "objectName": key,
            "contentType": content_type,
            "cacheControl": CACHE_CONTROL_SECONDS,
        }
        headers = {
            "Tus-Resumable": _TUS_VERSION,
            "Upload-Length": str(size_bytes),
            "Upload-Metadata": ",".join(
                f"{name} {base64.b64encode(value.encode()).decode()}" for name, value in metadata.items()
            ),
            "x-upsert": "false",
        }

        async def start() -> httpx.Response:
            # A retry after a lost answer leaves the first upload unused; Storage expires unfinished ones.
            response = await self._http.post(f"{self._storage_url}upload/resumable", headers=headers)
            if response.status_code != 201:
                raise _api_error(response)
            return response

        response = await self._retried("start a resumable upload", start)
        location = response.headers.get("Location")
        if not location:
            raise StorageUnavailableError("Supabase Storage started a resumable upload without a Location")
        upload_url = response.url.join(location)
        try:
            await self._send_chunks(upload_url, size_bytes, read)
        except StorageUnavailableError:
            # Best effort: free what the server holds; Storage also expires unfinished uploads itself.
            with contextlib.suppress(httpx.HTTPError):
                await self._http.delete(upload_url, headers={"Tus-Resumable": _TUS_VERSION})
            raise
        _LOG.debug("stored %s (%d bytes) by resumable upload", key, size_bytes)

    async def _send_chunks(self, upload_url: httpx.URL, size_bytes: int, read: ChunkReader) -> None:
        offset = 0
        failures = 0
        while offset < size_bytes:
            # After a partial chunk, the next one ends on a chunk boundary: Storage expects whole 6 MiB parts.
            chunk = await read(
                offset, min(self._chunk_bytes - offset % self._chunk_bytes, size_bytes - offset)
            )
            if not chunk:
                raise StorageUnavailableError("the file became shorter while it was being uploaded")
            headers = {
                "Tus-Resumable": _TUS_VERSION,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            }
            try:
                with _translated("upload a chunk"):
                    response = await self._http.patch(upload_url, content=chunk, headers=headers)
                    if response.status_code == 409 and _error_name(response) != "Duplicate":
                        # Our offset and the server's disagree (an earlier chunk landed in part).
                        raise _refusal("upload a chunk", 409, "offset conflict")
                    if response.status_code != 204:
                        raise _api_error(response)
            except StorageUnavailableError as error:
                is_offset_conflict = error.status_code == 409 and error.reason == "offset conflict"
                failures += 1
                if failures >= self._retry_policy.attempts or not (
                    is_offset_conflict or _is_transient(error)
                ):
                    raise
                # The chunk may have landed in part: resume from the offset the server holds.
                if not is_offset_conflict:
                    await asyncio.sleep(self._retry_policy.delay_seconds(failures))
                offset = await self._resumable_offset(upload_url)
                continue
            offset = _upload_offset(response, minimum=offset + 1)
            failures = 0

    async def _resumable_offset(self, upload_url: httpx.URL) -> int:
        async def ask() -> httpx.Response:
            response = await self._http.head(upload_url, headers={"Tus-Resumable": _TUS_VERSION})
            if response.status_code != 200:
                raise _api_error(response)
            return response

        return _upload_offset(await self._retried("resume an upload", ask), minimum=0)

    async def _stored(self, key: str, size_bytes: int, content_type: str, signed: bool) -> StoredAsset:
        """What every upload returns, once the object is stored (and counted in the metrics)."""
        metrics.record_upload("supabase", key, size_bytes)
        uri = await self.signed_uri(key) if signed else ""
        return StoredAsset(key=key, uri=uri, size_bytes=size_bytes, content_type=content_type)

    # Downloads and the bucket -------------------------------------------------------------------------------

    def _keep_copy(self, key: str, write: Callable[[Path], object]) -> None:
        """Puts what was just stored under `key` into the download cache, as a download would: written
        beside its place and renamed into it, so `local_path` never finds half of it. Only once Storage
        has it: the cache must not hold what Storage does not. A copy that cannot be kept (a full disk) is
        left out: the asset is stored, and `local_path` downloads it."""
        target = self._cache_root / key
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write(temporary)
            os.replace(temporary, target)
        except OSError as error:
            _LOG.warning("kept no local copy of %s, stored all the same: %s", key, error)
        finally:
            temporary.unlink(missing_ok=True)

    async def _download(self, key: str, target: Path) -> None:
        """Streams the object into a temporary file beside `target`, then renames it into place."""
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        stream = await asyncio.to_thread(open, temporary, "wb")
        try:
            try:
                with _translated("fetch an asset", key):
                    async with self._http.stream(
                        "GET", f"{self._storage_url}object/{self._bucket}/{key}"
                    ) as got:
                        if got.status_code != 200:
                            await got.aread()
                            raise _api_error(got)
                        async for piece in got.aiter_bytes(_DOWNLOAD_CHUNK_BYTES):
                            await asyncio.to_thread(stream.write, piece)
                await asyncio.to_thread(_flush_to_disk, stream)
            finally:
                await asyncio.to_thread(stream.close)
            await asyncio.to_thread(os.replace, temporary, target)
        finally:
            await asyncio.to_thread(temporary.unlink, missing_ok=True)

    async def _ensure_bucket(self) -> None:
        try:
            found = await self._client.get_bucket(self._bucket)
        except StorageApiError as error:
            if _status_code(error.status) != 404:
                with _translated("look up the bucket"):
                    raise
            with _translated("create the bucket"):
                try:
                    await self._client.create_bucket(self._bucket, options={"public": False})
                except StorageApiError as create_error:
                    # Another process made it first.
                    if _status_code(create_error.status) != 409:
                        raise
            _LOG.info("created the private bucket %r", self._bucket)
            return
        except httpx.HTTPError:
            with _translated("look up the bucket"):
                raise
        if found.public:
            _LOG.warning("bucket %r is public: anyone who learns a key can read the asset", self._bucket)


# Errors -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _translated(action: str, key: str | None = None) -> Iterator[None]:
    """Turns storage3 and httpx failures into AssetMissingError (when `key` is given) or
    StorageUnavailableError; `action` completes "… while trying to <action>"."""
    try:
        yield
    except StorageApiError as error:
        status = _status_code(error.status)
        if key is not None and status == 404 and error.code in ("not_found", "NoSuchKey"):
            raise AssetMissingError(key) from error
        raise _refusal(action, status, str(error.code)) from error
    except httpx.TimeoutException as error:
        raise StorageUnavailableError(f"Supabase Storage timed out while trying to {action}") from error
    except httpx.HTTPError as error:
        raise StorageUnavailableError(
            f"Supabase Storage could not be reached to {action} ({type(error).__name__})"
        ) from error


def _is_transient(error: StorageUnavailableError) -> bool:
    """Whether asking again may succeed: no answer came (lost connection, timeout), Storage failed (5xx), or
    it asked us to slow down (429). Read from the httpx or storage3 error `_translated` wrapped."""
    cause = error.__cause__
    if isinstance(cause, httpx.TransportError):
        return True
    if isinstance(cause, StorageApiError):
        status = _status_code(cause.status)
        return status is not None and (status == 429 or status >= 500)
    return False


def _refusal(action: str, status: int | None, reason: str) -> StorageUnavailableError:
    said = f"{status} {reason}" if status is not None else reason
    if status in (401, 403) or reason in ("Unauthorized", "AccessDenied", "InvalidJWT"):
        message = (
            f"Supabase Storage refused the service key while trying to {action} ({said}); "
            "check that it is the project's service-role key"
        )
    elif status == 409:
        message = (
            f"Supabase Storage already holds an asset under this key ({said}); "
            "assets are never overwritten, so store it under a new key"
        )
    elif status == 404 and reason in ("Bucket not found", "NoSuchBucket"):
        message = f"the asset bucket does not exist ({said}); SupabaseAssetStorage.create makes it"
    elif status == 413:
        message = f"the asset is larger than the bucket allows ({said})"
    elif status == 415:
        message = f"the bucket does not accept this content type ({said})"
    else:
        message = f"Supabase Storage failed while trying to {action} ({said})"
    return StorageUnavailableError(message, status, reason)


def _api_error(response: httpx.Response) -> StorageApiError:
    """Storage's error body (`statusCode`, `error`, `message`), or the HTTP status where there is none."""
    try:
        body = json.loads(response.content)
        return StorageApiError(str(body["message"]), str(body["error"]), str(body["statusCode"]))
    except (ValueError, KeyError, TypeError):
        return StorageApiError("unparsable error", response.reason_phrase or "Error", response.status_code)


def _error_name(response: httpx.Response) -> str | None:
    return str(_api_error(response).code)


def _status_code(status: int | str) -> int | None:
    return int(status) if str(status).isdigit() else None


def _upload_offset(response: httpx.Response, minimum: int) -> int:
    value = response.headers.get("Upload-Offset", "")
    if not value.isdigit() or int(value) < minimum:
        raise StorageUnavailableError(
            "Supabase Storage answered a resumable upload with a wrong Upload-Offset"
        )
    return int(value)


def _check_upload(key: str, content_type: str) -> None:
    validate_key(key)
    if not content_type:
        # Players and browsers guess badly without one, and defaults have varied between versions.
        raise ValueError("a content type is required")


def _file_reader(stream: BinaryIO) -> ChunkReader:
    def read(offset: int, size_bytes: int) -> bytes:
        stream.seek(offset)
        pieces = []
        while size_bytes > 0 and (piece := stream.read(size_bytes)):
            pieces.append(piece)
            size_bytes -= len(piece)
        return b"".join(pieces)

    async def read_in_thread(offset: int, size_bytes: int) -> bytes:
        return await asyncio.to_thread(read, offset, size_bytes)

    return read_in_thread


def _bytes_reader(data: bytes) -> ChunkReader:
    view = memoryview(data)

    async def read(offset: int, size_bytes: int) -> bytes:
        return bytes(view[offset : offset + size_bytes])

    return read


def _flush_to_disk(stream: BinaryIO) -> None:
    stream.flush()
    os.fsync(stream.fileno())
