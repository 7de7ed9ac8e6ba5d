"""The media endpoint: signed links to the embedded storage, over real HTTP.

What a client gets (ranges, types, caching) and what an attacker gets (one 403 for every forged, altered,
expired or out-of-scope link, and nothing outside the storage folder)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import pytest

from services.media.media_http import ROUTE_PREFIX, MediaHttpServer, build_media_app, listening_socket
from services.media.media_links import MediaLinkSigner, load_or_create_secret
from services.storage.base import StorageKeyError
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc

SECRET = b"a-test-secret-for-media-links-of-32-bytes-or-more"
LIFETIME_SECONDS = 600
VIDEO_KEY = "videos/0123456789abcdef/aa.quick.mp4"
OTHER_VIDEO_KEY = "videos/fedcba9876543210/bb.quick.mp4"
PLAYLIST_KEY = "live/0123456789abcdef/cc.m3u8"
SEGMENT_KEY = "live/0123456789abcdef/dd.m4s"
VIDEO_BYTES = bytes(range(256)) * 40


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Endpoint:
    base_url: str
    storage: Path
    signer: MediaLinkSigner
    clock: Clock
    client: httpx.AsyncClient


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[Endpoint]:
    storage = tmp_path / "storage"
    for key, data in {
        VIDEO_KEY: VIDEO_BYTES,
        OTHER_VIDEO_KEY: b"another owner's video",
        PLAYLIST_KEY: b"#EXTM3U\n#EXTINF:1.0,\ndd.m4s\n",
        SEGMENT_KEY: b"segment",
        "videos/0123456789abcdef/ee.vtt": b"WEBVTT\n",
    }.items():
        (storage / key).parent.mkdir(parents=True, exist_ok=True)
        (storage / key).write_bytes(data)
    # What must never be served, though it sits right beside the storage folder.
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "media-url-secret").write_text("do not serve")
    listener = listening_socket("127.0.0.1", 0)
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}{ROUTE_PREFIX}"
    clock = Clock()
    signer = MediaLinkSigner(SECRET, base_url, LIFETIME_SECONDS, clock=clock)
    server = MediaHttpServer(build_media_app(signer, storage), listener)
    await server.start()
    async with httpx.AsyncClient(timeout=10) as client:
        yield Endpoint(base_url, storage, signer, clock, client)
    await server.stop()


def _with_token(link: str, change: dict[int, str]) -> str:
    """The link with some of its token's four fields replaced."""
    prefix, _, rest = link.partition(ROUTE_PREFIX + "/")
    token, _, key = rest.partition("/")
    fields = token.split(".")
    for index, value in change.items():
        fields[index] = value
    return f"{prefix}{ROUTE_PREFIX}/{'.'.join(fields)}/{key}"


async def test_a_link_serves_its_video_whole_with_type_and_private_immutable_caching(
    endpoint: Endpoint,
) -> None:
    link = endpoint.signer.link(VIDEO_KEY, "alice")
    endpoint.clock.now += 100

    response = await endpoint.client.get(link)

    assert urlsplit(link).path.endswith("/" + VIDEO_KEY)
    assert response.status_code == 200
    assert response.content == VIDEO_BYTES
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["x-content-type-options"] == "nosniff"
    # Immutable under its key, and cached for exactly as long as the link still works.
    assert response.headers["cache-control"] == f"private, max-age={LIFETIME_SECONDS - 100}, immutable"


async def test_byte_ranges_let_a_player_seek(endpoint: Endpoint) -> None:
    link = endpoint.signer.link(VIDEO_KEY, "alice")
    size = len(VIDEO_BYTES)

    middle = await endpoint.client.get(link, headers={"Range": "bytes=100-199"})
    tail = await endpoint.client.get(link, headers={"Range": f"bytes={size - 10}-"})
    past_the_end = await endpoint.client.get(link, headers={"Range": f"bytes={size}-"})
    head = await endpoint.client.head(link)

    assert middle.status_code == 206
    assert middle.content == VIDEO_BYTES[100:200]
    assert middle.headers["content-range"] == f"bytes 100-199/{size}"
    assert tail.status_code == 206 and tail.content == VIDEO_BYTES[-10:]
    assert past_the_end.status_code == 416
    assert head.status_code == 200 and head.headers["content-length"] == str(size) and head.content == b""
    assert head.headers.get("accept-ranges") == "bytes"


async def test_the_live_playlist_is_never_cached_and_its_segments_come_with_its_token(
    endpoint: Endpoint,
) -> None:
    playlist_link = endpoint.signer.link(PLAYLIST_KEY, "alice")
    playlist = await endpoint.client.get(playlist_link)
    assert playlist.status_code == 200
    assert playlist.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert playlist.headers["cache-control"] == "no-store"

    # A player resolves the playlist's relative segment name against the playlist's own URL.
    segment = await endpoint.client.get(str(httpx.URL(playlist_link).join("dd.m4s")))
    assert segment.status_code == 200 and segment.content == b"segment"
    assert segment.headers["content-type"] == "video/iso.segment"
    # The token reaches the playlist's folder, and no other.
    elsewhere = playlist_link.replace(PLAYLIST_KEY, VIDEO_KEY)
    assert (await endpoint.client.get(elsewhere)).status_code == 403
    # A video's token reaches only its own file, not its neighbours.
    video_link = endpoint.signer.link(VIDEO_KEY, "alice")
    assert (await endpoint.client.get(str(httpx.URL(video_link).join("ee.vtt")))).status_code == 403


async def test_subtitles_are_served_as_webvtt(endpoint: Endpoint) -> None:
    response = await endpoint.client.get(endpoint.signer.link("videos/0123456789abcdef/ee.vtt", "alice"))

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/vtt; charset=utf-8"
    # A <track> on the page's own origin or another may read it: the link is the credential.
    assert response.headers["access-control-allow-origin"] == "*"


async def test_a_link_works_until_it_expires_and_never_after(endpoint: Endpoint) -> None:
    link = endpoint.signer.link(VIDEO_KEY, "alice")

    endpoint.clock.now += LIFETIME_SECONDS - 1
    assert (await endpoint.client.get(link)).status_code == 200
    endpoint.clock.now += 1
    expired = await endpoint.client.get(link)

    assert expired.status_code == 403
    assert expired.headers["cache-control"] == "no-store"


async def test_every_altered_or_foreign_link_gets_the_same_403(endpoint: Endpoint) -> None:
    link = endpoint.signer.link(VIDEO_KEY, "alice")
    token = urlsplit(link).path.split("/")[2]
    expiry, _owner, _scope, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    forger = MediaLinkSigner(b"x" * 32, endpoint.base_url, LIFETIME_SECONDS, clock=endpoint.clock)
    bob_link = endpoint.signer.link(OTHER_VIDEO_KEY, "bob")
    attempts = {
        "signature flipped": _with_token(link, {3: flipped}),
        "expiry extended": _with_token(link, {0: str(int(expiry) + 86_400)}),
        "owner changed": _with_token(link, {1: "Ym9i"}),
        "scope widened to the folder": _with_token(link, {2: "d"}),
        "another owner's video with alice's token": link.replace(VIDEO_KEY, OTHER_VIDEO_KEY),
        "alice's video with bob's token": bob_link.replace(OTHER_VIDEO_KEY, VIDEO_KEY),
        "another secret": forger.link(VIDEO_KEY, "alice"),
        "a key that does not exist, forged": forger.link("videos/0123456789abcdef/zz.mp4", "alice"),
        "no token": f"{endpoint.base_url}/{VIDEO_KEY}",
        "garbage token": f"{endpoint.base_url}/x.y.z.w/{VIDEO_KEY}",
        "empty fields": f"{endpoint.base_url}/.../{VIDEO_KEY}",
    }
    bodies = set()
    for what, attempt in attempts.items():
        response = await endpoint.client.get(attempt)
        assert response.status_code == 403, what
        bodies.add(response.content)
    assert len(bodies) == 1  # nothing in the answer says which check failed, or whether the key exists
    assert b"deleted" not in bodies.pop()


async def test_nothing_outside_the_storage_folder_is_reachable(endpoint: Endpoint) -> None:
    link = endpoint.signer.link(VIDEO_KEY, "alice")
    token = urlsplit(link).path.split("/")[2]
    raw_paths = [
        f"{ROUTE_PREFIX}/{token}/../secrets/media-url-secret",
        f"{ROUTE_PREFIX}/{token}/%2e%2e/secrets/media-url-secret",
        f"{ROUTE_PREFIX}/{token}/%2e%2e%2fsecrets%2fmedia-url-secret",
        f"{ROUTE_PREFIX}/{token}/videos/0123456789abcdef/..%2f..%2f..%2fsecrets/media-url-secret",
        f"{ROUTE_PREFIX}/{token}//etc/passwd",
        f"{ROUTE_PREFIX}/{token}/videos/0123456789abcdef/aa.quick.mp4%00.vtt",
        f"{ROUTE_PREFIX}/{token}/videos\\0123456789abcdef\\aa.quick.mp4",
    ]
    host = urlsplit(endpoint.base_url).netloc
    for raw_path in raw_paths:
        # Sent as written: httpx would normalise the dots away before they reached the server.
        async with httpx.AsyncClient(base_url=f"http://{host}", timeout=10) as client:
            request = client.build_request("GET", "/")
            request.url = request.url.copy_with(raw_path=raw_path.encode())
            response = await client.send(request)
        assert response.status_code in (403, 404), raw_path
        assert b"do not serve" not in response.content
    # And a link can never be minted for such a key in the first place.
    for bad_key in ("../secrets/media-url-secret", "/etc/passwd", "videos/../../x.mp4", ""):
        with pytest.raises(StorageKeyError, match="malformed storage key"):
            endpoint.signer.link(bad_key, "alice")


async def test_a_valid_link_to_a_deleted_asset_is_404(endpoint: Endpoint) -> None:
    link = endpoint.signer.link(VIDEO_KEY, "alice")
    (endpoint.storage / VIDEO_KEY).unlink()

    response = await endpoint.client.get(link)

    assert response.status_code == 404


async def test_only_reading_is_allowed(endpoint: Endpoint) -> None:
    link = endpoint.signer.link(VIDEO_KEY, "alice")
    for method in ("POST", "PUT", "DELETE"):
        response = await endpoint.client.request(method, link, content=b"x")
        assert response.status_code in (403, 405), method
    assert (endpoint.storage / VIDEO_KEY).read_bytes() == VIDEO_BYTES


def test_the_embedded_secret_is_made_once_owner_only_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "media-url-secret"

    first = load_or_create_secret(path)
    again = load_or_create_secret(path)

    assert first == again and len(first) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(tmp_path / "elsewhere") != first


async def test_the_media_service_signs_links_for_the_owner_it_is_told(
    media_stub: media_grpc.MediaServiceStub, tmp_path: Path
) -> None:
    """Through gRPC, as the gateway asks: an http link per existing asset, none for a missing one, and a
    request that names no owner is refused."""
    stored = tmp_path / "storage" / VIDEO_KEY
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(VIDEO_BYTES)

    signed = await media_stub.SignAssetUris(
        media_pb.SignAssetUrisRequest(storage_keys=[VIDEO_KEY, OTHER_VIDEO_KEY], owner="alice")
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await media_stub.SignAssetUris(media_pb.SignAssetUrisRequest(storage_keys=[VIDEO_KEY]))

    link, missing = signed.uris
    assert missing == ""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(link)
    assert response.status_code == 200 and response.content == VIDEO_BYTES
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "owner" in (refused.value.details() or "")
