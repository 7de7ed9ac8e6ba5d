"""Supabase asset storage against a Storage-compatible server on 127.0.0.1, via the real storage3 client."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from services.media.live import LiveNarration, LiveNarrationResult, PlaylistPublished, SpokenSegment
from services.media.speech import Narration
from services.storage.base import (
    AssetMissingError,
    AssetStorage,
    StorageKeyError,
    StorageUnavailableError,
    new_key,
)
from services.storage.local import LocalAssetStorage
from services.storage.supabase import StorageRetryPolicy, SupabaseAssetStorage
from tests.servers.supabase_storage import DEFAULT_SERVICE_KEY, ReceivedRequest, SupabaseStorageServer

BUCKET = "stillpoint-assets"
THRESHOLD_BYTES = 64 * 1024
CHUNK_BYTES = 64 * 1024
LARGE_BYTES = 300 * 1024
# The production policy's shape with waits short enough for tests.
FAST_RETRIES = StorageRetryPolicy(attempts=3, first_delay_seconds=0.01, max_delay_seconds=0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SupabaseStorageServer]:
    with SupabaseStorageServer(tmp_path / "server") as server:
        yield server


async def open_storage(
    server: SupabaseStorageServer,
    cache_dir: Path,
    service_key: str = DEFAULT_SERVICE_KEY,
    signed_url_expiry_seconds: int = 600,
) -> SupabaseAssetStorage:
    return await SupabaseAssetStorage.create(
        server.url,
        service_key,
        BUCKET,
        cache_dir=cache_dir,
        signed_url_expiry_seconds=signed_url_expiry_seconds,
        resumable_threshold_bytes=THRESHOLD_BYTES,
        chunk_bytes=CHUNK_BYTES,
        timeout_seconds=10.0,
        retry_policy=FAST_RETRIES,
    )


@pytest.fixture
async def storage(server: SupabaseStorageServer, tmp_path: Path) -> AsyncIterator[SupabaseAssetStorage]:
    async with await open_storage(server, tmp_path / "cache") as storage:
        yield storage


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    """A plain GET with no credentials, as a player holding only the URL would make it."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def requests_to(server: SupabaseStorageServer, method: str, path_part: str) -> list[ReceivedRequest]:
    return [r for r in server.received_requests() if r.method == method and path_part in r.path]


def exception_chain_text(error: BaseException) -> str:
    texts = []
    current: BaseException | None = error
    while current is not None:
        texts.append(f"{current!r} {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


async def test_stored_bytes_come_back_identical_through_the_signed_url_with_type_and_cache_control(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage
) -> None:
    data = os.urandom(10_000)
    key = new_key("images", "png")

    stored = await storage.put_bytes(key, data, "image/png")

    assert (stored.key, stored.size_bytes, stored.content_type) == (key, len(data), "image/png")
    status, headers, body = await asyncio.to_thread(fetch, stored.uri)
    assert (status, body) == (200, data)
    assert headers["Content-Type"] == "image/png"
    assert headers["Cache-Control"] == "max-age=31536000"
    [upload] = requests_to(server, "POST", f"/object/{BUCKET}/")
    assert upload.form == {"cacheControl": "31536000", "file.content-type": "image/png"}
    assert upload.headers["x-upsert"] == "false"
    assert not requests_to(server, "POST", "/upload/resumable")


async def test_a_small_file_goes_by_one_standard_upload(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage, tmp_path: Path
) -> None:
    source = tmp_path / "narration.wav"
    source.write_bytes(os.urandom(THRESHOLD_BYTES))
    key = new_key("narrations/0123456789abcdef", "wav")

    stored = await storage.put_file(key, source, "audio/wav")

    assert stored.size_bytes == THRESHOLD_BYTES
    assert len(requests_to(server, "POST", f"/object/{BUCKET}/")) == 1
    assert not requests_to(server, "POST", "/upload/resumable")
    kept = server.stored_object(BUCKET, key)
    assert kept is not None and kept.data == source.read_bytes() and kept.content_type == "audio/wav"


async def test_a_file_above_the_threshold_goes_by_tus_in_several_chunks_and_arrives_intact(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage, tmp_path: Path
) -> None:
    data = os.urandom(LARGE_BYTES)
    source = tmp_path / "quick.mp4"
    source.write_bytes(data)
    key = new_key("videos/0123456789abcdef", "quick.mp4")

    stored = await storage.put_file(key, source, "video/mp4")

    assert stored.size_bytes == LARGE_BYTES
    assert not requests_to(server, "POST", f"/object/{BUCKET}/")
    [created] = requests_to(server, "POST", "/upload/resumable")
    assert created.headers["upload-length"] == str(LARGE_BYTES)
    assert created.headers["x-upsert"] == "false"
    patches = requests_to(server, "PATCH", "/upload/resumable/")
    assert [int(p.headers["upload-offset"]) for p in patches] == list(range(0, LARGE_BYTES, CHUNK_BYTES))
    assert {p.headers["content-type"] for p in patches} == {"application/offset+octet-stream"}
    assert all(p.status == 204 for p in patches)
    kept = server.stored_object(BUCKET, key)
    assert kept is not None
    assert (kept.data, kept.content_type, kept.cache_control) == (data, "video/mp4", "max-age=31536000")
    status, _, body = await asyncio.to_thread(fetch, stored.uri)
    assert (status, body) == (200, data)


async def test_large_bytes_also_go_by_tus(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage
) -> None:
    data = os.urandom(THRESHOLD_BYTES + 1)
    key = new_key("images", "png")

    await storage.put_bytes(key, data, "image/png")

    assert len(requests_to(server, "PATCH", "/upload/resumable/")) == 2
    kept = server.stored_object(BUCKET, key)
    assert kept is not None and kept.data == data


async def test_a_chunk_lost_on_the_way_resumes_from_the_offset_the_server_holds(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage, tmp_path: Path
) -> None:
    data = os.urandom(LARGE_BYTES)
    source = tmp_path / "full.mp4"
    source.write_bytes(data)
    key = new_key("videos/0123456789abcdef", "full.mp4")
    server.interrupt_next_patches(1)

    await storage.put_file(key, source, "video/mp4")

    patches = requests_to(server, "PATCH", "/upload/resumable/")
    assert patches[0].status is None
    assert len(requests_to(server, "HEAD", "/upload/resumable/")) == 1
    # Half the first chunk arrived; the next chunk makes up the rest, and the others stay aligned.
    offsets = [int(p.headers["upload-offset"]) for p in patches]
    assert offsets == [0, CHUNK_BYTES // 2, *range(CHUNK_BYTES, LARGE_BYTES, CHUNK_BYTES)]
    kept = server.stored_object(BUCKET, key)
    assert kept is not None and kept.data == data


@pytest.mark.parametrize("size_bytes", [100, LARGE_BYTES], ids=["standard", "resumable"])
async def test_a_duplicate_key_is_refused_and_the_first_asset_kept(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage, size_bytes: int
) -> None:
    key = new_key("images", "png")
    await storage.put_bytes(key, b"first", "image/png")

    with pytest.raises(StorageUnavailableError) as refused:
        await storage.put_bytes(key, os.urandom(size_bytes), "image/png")

    assert (refused.value.status_code, refused.value.reason) == (409, "Duplicate")
    assert "new key" in str(refused.value)
    assert key not in str(refused.value)
    kept = server.stored_object(BUCKET, key)
    assert kept is not None and kept.data == b"first"


async def test_signed_urls_stop_working_after_they_expire(
    server: SupabaseStorageServer, tmp_path: Path
) -> None:
    async with await open_storage(server, tmp_path / "cache", signed_url_expiry_seconds=1) as storage:
        stored = await storage.put_bytes(new_key("images", "png"), b"png-bytes", "image/png")

    # The fake server signs with whole seconds of wall-clock time, as Storage does: poll until it refuses.
    deadline = time.monotonic() + 10
    while (status := (await asyncio.to_thread(fetch, stored.uri))[0]) != 400:
        assert status == 200, f"a live signed URL answered {status}"
        assert time.monotonic() < deadline, "the signed URL still works 10 s after a 1 s expiry"
        await asyncio.sleep(0.1)  # the polling interval, not a wait for the expiry itself


async def test_a_tampered_signed_url_is_refused(storage: SupabaseAssetStorage) -> None:
    stored = await storage.put_bytes(new_key("images", "png"), b"png-bytes", "image/png")
    tampered = stored.uri[:-2] + ("xx" if not stored.uri.endswith("xx") else "yy")

    status, _, body = await asyncio.to_thread(fetch, tampered)

    assert status == 400
    assert b"png-bytes" not in body


async def test_signed_uri_signs_afresh_and_uri_returns_the_last_one(storage: SupabaseAssetStorage) -> None:
    key = new_key("images", "png")
    with pytest.raises(StorageUnavailableError, match="await signed_uri"):
        storage.uri(key)
    stored = await storage.put_bytes(key, b"png-bytes", "image/png")
    assert storage.uri(key) == stored.uri

    again = await storage.signed_uri(key)

    assert storage.uri(key) == again
    status, _, body = await asyncio.to_thread(fetch, again)
    assert (status, body) == (200, b"png-bytes")


async def test_local_path_downloads_once_and_reuses_the_cache(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage, tmp_path: Path
) -> None:
    data = os.urandom(LARGE_BYTES)
    key = new_key("videos/0123456789abcdef", "quick.mp4")
    await storage.put_bytes(key, data, "video/mp4")

    paths = await asyncio.gather(storage.local_path(key), storage.local_path(key))
    again = await storage.local_path(key)

    assert paths[0] == paths[1] == again
    assert again.is_relative_to(tmp_path / "cache")
    assert again.read_bytes() == data
    assert len(requests_to(server, "GET", f"/object/{BUCKET}/{key}")) == 1
    assert not list((tmp_path / "cache").rglob("*.partial"))


@pytest.mark.parametrize("size_bytes", [1000, LARGE_BYTES])
async def test_what_is_stored_to_be_read_back_is_read_without_a_download(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage, tmp_path: Path, size_bytes: int
) -> None:
    """The live narration's AAC and subtitles are read back at once by the same process's renders: kept in
    the download cache as they are stored, they cost no download (a request on the way to QUICK)."""
    data = os.urandom(size_bytes)
    from_bytes = new_key("videos/0123456789abcdef", "vtt")
    await storage.put_bytes(from_bytes, data, "text/vtt", read_back=True)
    source = tmp_path / "narration.aac"
    source.write_bytes(data)
    from_file = new_key("narrations/0123456789abcdef", "aac")
    await storage.put_file(from_file, source, "audio/aac", read_back=True)
    source.unlink()  # the scratch folder goes with the job

    for key in (from_bytes, from_file):
        path = await storage.local_path(key)
        assert path.is_relative_to(tmp_path / "cache")
        assert path.read_bytes() == data
    assert not requests_to(server, "GET", "/object/")
    assert not list((tmp_path / "cache").rglob("*.partial"))


async def test_what_storage_refused_is_not_kept_to_be_read_back(
    storage: SupabaseAssetStorage, tmp_path: Path
) -> None:
    key = new_key("videos/0123456789abcdef", "vtt")
    await storage.put_bytes(key, b"WEBVTT\n", "text/vtt")
    with pytest.raises(StorageUnavailableError):
        await storage.put_bytes(key, b"other", "text/vtt", read_back=True)  # a duplicate key is refused
    assert (await storage.local_path(key)).read_bytes() == b"WEBVTT\n"


async def test_a_missing_key_is_reported_as_missing(storage: SupabaseAssetStorage, tmp_path: Path) -> None:
    key = new_key("images", "png")

    with pytest.raises(AssetMissingError) as missing:
        await storage.local_path(key)
    with pytest.raises(AssetMissingError):
        await storage.signed_uri(key)

    assert missing.value.key == key
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


async def test_exists_tells_stored_from_missing(storage: SupabaseAssetStorage) -> None:
    key = new_key("images", "png")
    assert not await storage.exists(key)

    await storage.put_bytes(key, b"png-bytes", "image/png")

    assert await storage.exists(key)


async def test_a_wrong_service_key_is_a_clear_error_that_never_shows_the_key(
    server: SupabaseStorageServer, tmp_path: Path
) -> None:
    wrong_key = "sb_" + "secret_wrong-0123456789"

    with pytest.raises(StorageUnavailableError) as refused:
        await open_storage(server, tmp_path / "cache", service_key=wrong_key)

    assert "refused the service key" in str(refused.value)
    assert refused.value.status_code == 403
    assert wrong_key not in exception_chain_text(refused.value)
    assert DEFAULT_SERVICE_KEY not in exception_chain_text(refused.value)


async def test_a_service_key_revoked_after_start_is_reported_on_use(
    server: SupabaseStorageServer, tmp_path: Path
) -> None:
    wrong_key = "revoked-service-key"
    async with await open_storage(server, tmp_path / "cache") as good:
        key = new_key("images", "png")
        await good.put_bytes(key, b"png-bytes", "image/png")
    # The bucket exists now, so only each operation's own request can tell the key is wrong.
    revoked = SupabaseAssetStorage(server.url, wrong_key, BUCKET, cache_dir=tmp_path / "cache")
    try:
        for operation in (
            revoked.exists(key),
            revoked.local_path(key),
            revoked.signed_uri(key),
            revoked.put_bytes(new_key("images", "png"), b"x", "image/png"),
            revoked.put_bytes(new_key("images", "png"), os.urandom(THRESHOLD_BYTES + 1), "image/png"),
        ):
            with pytest.raises(StorageUnavailableError) as refused:
                await operation
            assert "service key" in str(refused.value)
            assert wrong_key not in exception_chain_text(refused.value)
            assert key not in str(refused.value)
    finally:
        await revoked.aclose()


async def test_unreachable_storage_is_unavailable(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(StorageUnavailableError, match="could not be reached"):
        await SupabaseAssetStorage.create(
            f"http://127.0.0.1:{port}", DEFAULT_SERVICE_KEY, BUCKET, cache_dir=tmp_path / "cache"
        )


async def test_create_makes_a_private_bucket_and_finds_it_the_next_time(
    server: SupabaseStorageServer, tmp_path: Path
) -> None:
    for _ in range(2):
        async with await open_storage(server, tmp_path / "cache"):
            pass

    assert len(requests_to(server, "POST", "/storage/v1/bucket")) == 1
    assert len(requests_to(server, "GET", f"/storage/v1/bucket/{BUCKET}")) == 2


async def test_malformed_keys_and_missing_content_types_are_refused_before_any_request(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage
) -> None:
    server.clear_requests()
    with pytest.raises(StorageKeyError):
        await storage.put_bytes("../escape.png", b"x", "image/png")
    with pytest.raises(StorageKeyError):
        await storage.local_path("images/../../etc/passwd")
    with pytest.raises(ValueError, match="content type"):
        await storage.put_bytes(new_key("images", "png"), b"x", "")
    assert server.received_requests() == []


async def test_both_stores_fit_the_asset_storage_protocol(
    storage: SupabaseAssetStorage, tmp_path: Path
) -> None:
    local = LocalAssetStorage(tmp_path / "local")
    stores: list[AssetStorage] = [storage, local]
    key = new_key("images", "png")

    for store in stores:
        await store.put_bytes(key, b"png-bytes", "image/png")
        assert (await store.local_path(key)).read_bytes() == b"png-bytes"

    assert await local.signed_uri(key) == local.uri(key) == (tmp_path / "local" / key).resolve().as_uri()
    assert DEFAULT_SERVICE_KEY not in repr(storage)


async def test_delete_prefix_empties_a_folder_larger_than_one_listing_page(
    storage: SupabaseAssetStorage, server: SupabaseStorageServer
) -> None:
    """A live preview stores more segments than Storage lists at once (100): every one must go, and
    nothing outside the folder."""
    for index in range(130):
        await storage.put_bytes(f"live/0123456789abcdef/{index:04d}.m4s", b"segment", "video/iso.segment")
    await storage.put_bytes("live/fedcba9876543210/0000.m4s", b"another job's", "video/iso.segment")

    assert await storage.prefix_size("live/0123456789abcdef") == 130 * len(b"segment")
    assert await storage.delete_prefix("live/0123456789abcdef") == 130

    assert server.stored_names(BUCKET) == ["live/fedcba9876543210/0000.m4s"]
    assert await storage.delete_prefix("live/0123456789abcdef") == 0


# Transient failures are retried with backoff within the policy; refusals are not ----------------------


@pytest.mark.parametrize("status", [503, 500, 429, None], ids=["503", "500", "429", "hangup"])
async def test_a_standard_upload_failing_for_a_moment_is_retried_and_stored(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage, status: int | None
) -> None:
    key = new_key("images/0123456789abcdef", "png")
    server.fail_next_requests(2, status=status, path_part=f"/object/{BUCKET}/")

    stored = await storage.put_bytes(key, b"image bytes", "image/png")

    assert [r.status for r in requests_to(server, "POST", f"/object/{BUCKET}/")] == [
        status if status is None or status >= 500 else 400,
        status if status is None or status >= 500 else 400,
        200,
    ]
    kept = server.stored_object(BUCKET, key)
    assert kept is not None and kept.data == b"image bytes"
    assert stored.uri


async def test_an_outage_longer_than_the_retry_policy_fails_as_unavailable(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage
) -> None:
    server.fail_next_requests(10, status=503, path_part=f"/object/{BUCKET}/")

    with pytest.raises(StorageUnavailableError) as raised:
        await storage.put_bytes(new_key("images/0123456789abcdef", "png"), b"x", "image/png")

    assert raised.value.status_code == 503
    assert len(requests_to(server, "POST", f"/object/{BUCKET}/")) == FAST_RETRIES.attempts


async def test_a_refusal_is_not_retried(server: SupabaseStorageServer, storage: SupabaseAssetStorage) -> None:
    server.fail_next_requests(1, status=403, path_part=f"/object/{BUCKET}/")

    with pytest.raises(StorageUnavailableError, match="service key"):
        await storage.put_bytes(new_key("images/0123456789abcdef", "png"), b"x", "image/png")

    assert len(requests_to(server, "POST", f"/object/{BUCKET}/")) == 1


async def test_starting_a_resumable_upload_is_retried_after_a_server_error(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage
) -> None:
    data = os.urandom(LARGE_BYTES)
    key = new_key("videos/0123456789abcdef", "full.mp4")
    server.fail_next_requests(1, status=502, path_part="/upload/resumable")

    await storage.put_bytes(key, data, "video/mp4")

    assert [r.status for r in requests_to(server, "POST", "/upload/resumable")] == [502, 201]
    kept = server.stored_object(BUCKET, key)
    assert kept is not None and kept.data == data


async def test_a_chunk_answered_with_a_server_error_resumes_from_the_server_offset(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage
) -> None:
    data = os.urandom(LARGE_BYTES)
    key = new_key("videos/0123456789abcdef", "full.mp4")
    # Every PATCH and HEAD goes to /upload/resumable/<id>; the creating POST has no trailing part.
    server.fail_next_requests(1, status=503, path_part="/upload/resumable/")

    await storage.put_bytes(key, data, "video/mp4")

    assert next(r.status for r in requests_to(server, "PATCH", "/upload/resumable/")) == 503
    assert len(requests_to(server, "HEAD", "/upload/resumable/")) == 1
    kept = server.stored_object(BUCKET, key)
    assert kept is not None and kept.data == data


async def test_signing_is_retried_after_a_timeout_like_hangup(
    server: SupabaseStorageServer, storage: SupabaseAssetStorage
) -> None:
    key = new_key("images/0123456789abcdef", "png")
    await storage.put_bytes(key, b"image bytes", "image/png")
    server.fail_next_requests(1, status=None, path_part="/object/sign/")

    url = await storage.signed_uri(key)

    assert [r.status for r in requests_to(server, "POST", "/object/sign/")][-2:] == [None, 200]
    assert fetch(url)[2] == b"image bytes"


async def test_a_live_narration_signs_only_the_segments_its_playlist_names(
    storage: SupabaseAssetStorage, server: SupabaseStorageServer, tmp_path: Path
) -> None:
    """The gateway signs each reader's URI of the playlist and the narration when it hands them out: media
    signs only what the playlist itself must name, in one request per publication, and the playlist and the
    AAC go up unsigned (each signing was a request nobody read, one of them before first playable media)."""

    async def speak(sentences: Sequence[str]) -> list[SpokenSegment]:
        return [SpokenSegment(Narration(bytes(2 * 24_000 * 3), 24_000), "openai", "") for _ in sentences]

    work_root = tmp_path / "work"
    work_root.mkdir()
    async with LiveNarration(
        meditation_id="0123456789abcdef", speak=speak, storage=storage, work_root=work_root
    ) as live:
        live.add_text("Breathe in. And out, slowly. Let the day go.")
        live.finish_script()
        events = [event async for event in live.events()]
    assert isinstance(events[0], PlaylistPublished)
    assert isinstance(events[-1], LiveNarrationResult)
    signing = requests_to(server, "POST", "/object/sign/")
    assert signing
    # Each a batch (the keys in the body), never one object by its path.
    assert all(request.path.rstrip("/").endswith(f"/object/sign/{BUCKET}") for request in signing)
    # Its renders read the AAC and the subtitles back at once, from where they were kept: no download.
    result = events[-1]
    for key in (result.aac_key, result.subtitles_key):
        assert (await storage.local_path(key)).is_relative_to(tmp_path / "cache")
    assert not requests_to(server, "GET", "/object/")
