"""The Supabase Storage test server, driven by the real storage3 client (and plain HTTP) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError

from tests.servers.supabase_storage import DEFAULT_SERVICE_KEY, SupabaseStorageServer

BUCKET = "assets"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SupabaseStorageServer]:
    with SupabaseStorageServer(tmp_path / "storage") as server:
        yield server


def storage_client(server: SupabaseStorageServer, key: str = DEFAULT_SERVICE_KEY) -> AsyncStorageClient:
    """storage3 exactly as supabase-py builds it: the project URL plus /storage/v1/, and both auth headers."""
    return AsyncStorageClient(f"{server.url}/storage/v1/", {"apikey": key, "Authorization": f"Bearer {key}"})


@pytest.fixture
async def client(server: SupabaseStorageServer) -> AsyncIterator[AsyncStorageClient]:
    async with storage_client(server) as client:
        await client.create_bucket(BUCKET, options={"public": False})
        yield client


def fetch(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain urllib GET, as a browser or player holding only the URL would make it."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def tus_metadata(**values: str) -> str:
    return ",".join(f"{name} {base64.b64encode(value.encode()).decode()}" for name, value in values.items())


def auth_headers(key: str = DEFAULT_SERVICE_KEY) -> dict[str, str]:
    return {"apikey": key, "Authorization": f"Bearer {key}"}


async def test_uploaded_bytes_come_back_identical_with_their_content_type_and_cache_control(
    server: SupabaseStorageServer, client: AsyncStorageClient
) -> None:
    # Line breaks and dashes inside the file must survive the multipart framing.
    data = os.urandom(20_000) + b"\r\n--\r\n\r\n" + os.urandom(100)
    bucket = client.from_(BUCKET)
    await bucket.upload(
        "images/a.png", data, {"content-type": "image/png", "cache-control": "31536000", "upsert": "false"}
    )

    assert await bucket.download("images/a.png") == data
    info = await bucket.info("images/a.png")
    assert (info["content_type"], info["cache_control"], info["size"]) == (
        "image/png",
        "max-age=31536000",
        len(data),
    )
    status, headers, body = await asyncio.to_thread(
        fetch, f"{server.url}/storage/v1/object/authenticated/{BUCKET}/images/a.png", auth_headers()
    )
    assert (status, body) == (200, data)
    assert headers["Content-Type"] == "image/png"
    assert headers["Cache-Control"] == "max-age=31536000"
    upload = next(r for r in server.received_requests() if r.method == "POST" and "/object/" in r.path)
    assert upload.form == {"cacheControl": "31536000", "file.content-type": "image/png"}
    assert upload.headers["x-upsert"] == "false"


async def test_a_duplicate_path_is_refused_without_upsert_and_replaced_with_it(
    server: SupabaseStorageServer, client: AsyncStorageClient
) -> None:
    bucket = client.from_(BUCKET)
    await bucket.upload("videos/m/a.mp4", b"first", {"content-type": "video/mp4"})

    with pytest.raises(StorageApiError) as refused:
        await bucket.upload("videos/m/a.mp4", b"second", {"content-type": "video/mp4", "upsert": "false"})

    assert (refused.value.status, refused.value.code, refused.value.message) == (
        "409",
        "Duplicate",
        "The resource already exists",
    )
    assert server.received_requests()[-1].status == 400
    assert await bucket.download("videos/m/a.mp4") == b"first"
    await bucket.upload("videos/m/a.mp4", b"second", {"content-type": "video/mp4", "upsert": "true"})
    assert await bucket.download("videos/m/a.mp4") == b"second"


async def test_requests_without_the_service_key_are_refused_and_the_key_is_never_logged(
    server: SupabaseStorageServer,
) -> None:
    async with storage_client(server, "wrong-key") as client:
        with pytest.raises(StorageApiError) as refused:
            await client.list_buckets()
    async with httpx.AsyncClient() as http:
        anonymous = await http.get(f"{server.url}/storage/v1/bucket")

    assert (refused.value.status, refused.value.code, refused.value.message) == (
        "403",
        "Unauthorized",
        "invalid signature",
    )
    assert anonymous.status_code == 400
    assert anonymous.json()["message"] == "jwt must be provided"
    assert [r.status for r in server.received_requests()] == [400, 400]
    recorded = repr(server.received_requests())
    assert DEFAULT_SERVICE_KEY not in recorded
    assert "wrong-key" not in recorded


async def test_the_apikey_header_alone_is_accepted(server: SupabaseStorageServer) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.url}/storage/v1/bucket", headers={"apikey": DEFAULT_SERVICE_KEY})
    assert response.status_code == 200
    assert response.json() == []


async def test_missing_objects_and_buckets_are_not_found(
    server: SupabaseStorageServer, client: AsyncStorageClient
) -> None:
    bucket = client.from_(BUCKET)
    with pytest.raises(StorageApiError) as missing:
        await bucket.download("images/none.png")
    assert (missing.value.status, missing.value.code) == ("404", "not_found")
    assert not await bucket.exists("images/none.png")
    with pytest.raises(StorageApiError) as no_bucket:
        await client.get_bucket("elsewhere")
    assert (no_bucket.value.status, no_bucket.value.code) == ("404", "Bucket not found")


async def test_buckets_are_private_unless_asked_and_their_ids_unique(client: AsyncStorageClient) -> None:
    bucket = await client.get_bucket(BUCKET)
    assert (bucket.id, bucket.public) == (BUCKET, False)
    with pytest.raises(StorageApiError) as duplicate:
        await client.create_bucket(BUCKET)
    assert (duplicate.value.status, duplicate.value.code) == ("409", "Duplicate")


async def test_exists_info_and_delete(client: AsyncStorageClient) -> None:
    bucket = client.from_(BUCKET)
    await bucket.upload("narrations/m/a.wav", b"RIFF", {"content-type": "audio/wav"})
    assert await bucket.exists("narrations/m/a.wav")

    removed = await bucket.remove(["narrations/m/a.wav"])

    assert [item["name"] for item in removed] == ["narrations/m/a.wav"]
    assert not await bucket.exists("narrations/m/a.wav")


async def test_signed_urls_serve_the_object_without_credentials(
    server: SupabaseStorageServer, client: AsyncStorageClient
) -> None:
    bucket = client.from_(BUCKET)
    await bucket.upload("images/a.png", b"png-bytes", {"content-type": "image/png", "cache-control": "60"})

    signed = await bucket.create_signed_url("images/a.png", 60)

    url = signed["signedURL"]
    assert url is not None and url.startswith(
        f"{server.url}/storage/v1/object/sign/{BUCKET}/images/a.png?token="
    )
    status, headers, body = await asyncio.to_thread(fetch, url)
    assert (status, body) == (200, b"png-bytes")
    assert (headers["Content-Type"], headers["Cache-Control"]) == ("image/png", "max-age=60")
    served = server.received_requests()[-1]
    assert not served.has_credentials
    assert "token" not in repr(served)


async def test_signed_urls_stop_working_when_they_expire(tmp_path: Path) -> None:
    now = time.time()
    with SupabaseStorageServer(tmp_path / "storage", clock=lambda: now) as server:
        async with storage_client(server) as client:
            await client.create_bucket(BUCKET, options={"public": False})
            bucket = client.from_(BUCKET)
            await bucket.upload("images/a.png", b"png-bytes", {"content-type": "image/png"})
            signed = await bucket.create_signed_url("images/a.png", 1)
            assert signed["signedURL"] is not None
            status, _, _ = await asyncio.to_thread(fetch, signed["signedURL"])
            assert status == 200

            now += 2

            status, _, body = await asyncio.to_thread(fetch, signed["signedURL"])
    assert status == 400
    assert json.loads(body) == {
        "statusCode": "400",
        "code": "InvalidJWT",
        "error": "InvalidJWT",
        "message": "jwt expired",
    }


async def test_tampered_or_borrowed_signed_urls_are_refused(client: AsyncStorageClient) -> None:
    bucket = client.from_(BUCKET)
    for name in ("images/a.png", "images/b.png"):
        await bucket.upload(name, b"bytes", {"content-type": "image/png"})
    url = (await bucket.create_signed_url("images/a.png", 60))["signedURL"]
    assert url is not None
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    borrowed = url.replace("images/a.png", "images/b.png")

    tampered_status, _, tampered_body = await asyncio.to_thread(fetch, tampered)
    borrowed_status, _, borrowed_body = await asyncio.to_thread(fetch, borrowed)
    unsigned_status, _, _ = await asyncio.to_thread(fetch, url.split("?", 1)[0])

    assert (tampered_status, json.loads(tampered_body)["message"]) == (400, "invalid signature")
    assert (borrowed_status, json.loads(borrowed_body)["error"]) == (400, "InvalidSignature")
    assert unsigned_status == 400


async def test_range_requests_get_partial_content(
    server: SupabaseStorageServer, client: AsyncStorageClient
) -> None:
    await client.from_(BUCKET).upload("videos/m/a.mp4", bytes(range(100)), {"content-type": "video/mp4"})

    status, headers, body = await asyncio.to_thread(
        fetch,
        f"{server.url}/storage/v1/object/{BUCKET}/videos/m/a.mp4",
        {**auth_headers(), "Range": "bytes=10-19"},
    )

    assert (status, body) == (206, bytes(range(10, 20)))
    assert headers["Content-Range"] == "bytes 10-19/100"


async def test_tus_upload_arrives_in_chunks_and_appears_when_complete(
    server: SupabaseStorageServer, client: AsyncStorageClient
) -> None:
    data = os.urandom(250_000)
    async with httpx.AsyncClient(headers={**auth_headers(), "Tus-Resumable": "1.0.0"}) as http:
        created = await http.post(
            f"{server.url}/storage/v1/upload/resumable",
            headers={
                "Upload-Length": str(len(data)),
                "Upload-Metadata": tus_metadata(
                    bucketName=BUCKET,
                    objectName="videos/m/a.mp4",
                    contentType="video/mp4",
                    cacheControl="3600",
                ),
                "x-upsert": "false",
            },
        )
        assert created.status_code == 201
        location = created.headers["Location"]
        assert location.startswith(f"{server.url}/storage/v1/upload/resumable/")
        for offset in range(0, len(data), 100_000):
            assert not await client.from_(BUCKET).exists("videos/m/a.mp4")
            patched = await http.patch(
                location,
                content=data[offset : offset + 100_000],
                headers={"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
            )
            assert patched.status_code == 204
            assert patched.headers["Upload-Offset"] == str(min(offset + 100_000, len(data)))
        head = await http.head(location)

    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (str(len(data)), str(len(data)))
    assert await client.from_(BUCKET).download("videos/m/a.mp4") == data
    info = await client.from_(BUCKET).info("videos/m/a.mp4")
    assert (info["content_type"], info["cache_control"]) == ("video/mp4", "max-age=3600")


async def test_tus_refuses_wrong_offsets_types_versions_and_duplicates(
    server: SupabaseStorageServer, client: AsyncStorageClient
) -> None:
    await client.from_(BUCKET).upload("videos/m/taken.mp4", b"x", {"content-type": "video/mp4"})
    endpoint = f"{server.url}/storage/v1/upload/resumable"
    async with httpx.AsyncClient(headers=auth_headers()) as http:
        created = await http.post(
            endpoint,
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Length": "10",
                "Upload-Metadata": tus_metadata(bucketName=BUCKET, objectName="videos/m/a.mp4"),
            },
        )
        location = created.headers["Location"]
        chunk = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}
        wrong_offset = await http.patch(location, content=b"12345", headers={**chunk, "Upload-Offset": "5"})
        wrong_type = await http.patch(
            location, content=b"12345", headers={**chunk, "Upload-Offset": "0", "Content-Type": "text/plain"}
        )
        too_long = await http.patch(location, content=b"0123456789A", headers={**chunk, "Upload-Offset": "0"})
        no_version = await http.patch(location, content=b"12345", headers={"Upload-Offset": "0"})
        duplicate = await http.post(
            endpoint,
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Length": "1",
                "Upload-Metadata": tus_metadata(bucketName=BUCKET, objectName="videos/m/taken.mp4"),
            },
        )
        unauthorized = await http.head(
            location, headers={"Tus-Resumable": "1.0.0", "Authorization": "Bearer x"}
        )
        head = await http.head(location, headers={"Tus-Resumable": "1.0.0"})

    assert wrong_offset.status_code == 409
    assert wrong_type.status_code == 415
    assert too_long.status_code == 413
    assert no_version.status_code == 412
    assert (duplicate.status_code, duplicate.json()["error"]) == (409, "Duplicate")
    assert unauthorized.status_code == 403
    assert head.headers["Upload-Offset"] == "0"


async def test_an_interrupted_patch_keeps_what_arrived_and_hangs_up(server: SupabaseStorageServer) -> None:
    async with httpx.AsyncClient(headers={**auth_headers(), "Tus-Resumable": "1.0.0"}) as http:
        await http.post(f"{server.url}/storage/v1/bucket", json={"id": BUCKET})
        created = await http.post(
            f"{server.url}/storage/v1/upload/resumable",
            headers={
                "Upload-Length": "10",
                "Upload-Metadata": tus_metadata(bucketName=BUCKET, objectName="a/b"),
            },
        )
        server.interrupt_next_patches(1)
        with pytest.raises(httpx.RemoteProtocolError):
            await http.patch(
                created.headers["Location"],
                content=b"0123456789",
                headers={"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
            )
        head = await http.head(created.headers["Location"])

    assert head.headers["Upload-Offset"] == "5"
    assert server.received_requests()[-2].status is None


def test_runs_as_a_process_and_prints_its_url(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tests.servers.supabase_storage", "--host", "127.0.0.1", "--port", "0"]
    command += ["--root", str(tmp_path), "--service-key", "process-key"]
    with subprocess.Popen(command, cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("listening on http://127.0.0.1:")
            url = line.removeprefix("listening on ")
            status, _, body = fetch(f"{url}/storage/v1/bucket", auth_headers("process-key"))
            assert (status, json.loads(body)) == (200, [])
        finally:
            process.terminate()
            process.wait(timeout=10)
    assert process.returncode == 0
