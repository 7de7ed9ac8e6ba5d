"""Image URLs from providers: checked public addresses only, pinned, no redirects; decoding on a budget."""

from __future__ import annotations

import io
import ipaddress
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from services.content.config import ContentConfig
from services.content.image_decoding import (
    MAX_IMAGE_PIXELS,
    ImageRejectedError,
    as_rgb_png,
    enforce_decoding_limits,
)
from services.content.image_download import DownloadPolicy, download_image, is_public
from services.environment import ConfigError, Environment
from services.openai_api import ProviderCallError, ProviderFailureKind

LOOPBACK_ALLOWED = DownloadPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))


def _png(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 60, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


class _Site(ThreadingHTTPServer):
    """A tiny web server on 127.0.0.1: /image.png, /moved (a redirect to it), and every request's Host."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SiteHandler)
        self.requests: list[tuple[str, str]] = []
        self.image = _png()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _SiteHandler(BaseHTTPRequestHandler):
    server: _Site

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Host") or ""))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.port}/image.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/huge.png":
            self.send_response(200)
            self.send_header("Content-Length", str(60 * 1024 * 1024))
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.server.image)))
        self.end_headers()
        self.wfile.write(self.server.image)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[_Site]:
    server = _Site()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_an_allowed_address_is_downloaded(site: _Site) -> None:
    data = download_image(f"http://127.0.0.1:{site.port}/image.png", 10, LOOPBACK_ALLOWED)
    assert data == site.image


def test_a_redirect_is_refused_and_not_followed(site: _Site) -> None:
    with pytest.raises(ProviderCallError) as raised:
        download_image(f"http://127.0.0.1:{site.port}/moved", 10, LOOPBACK_ALLOWED)
    assert raised.value.kind is ProviderFailureKind.REJECTED
    assert "redirect" in raised.value.message
    assert [path for path, _ in site.requests] == ["/moved"]


def test_the_connection_goes_to_the_address_checked_with_the_name_as_host(site: _Site) -> None:
    """A name resolved once: the socket goes to that address (no second lookup to rebind), and the request
    still names the host. The name does not exist in DNS, so any lookup but ours would fail."""
    lookups: list[str] = []

    def resolver(host: str, port: int) -> Sequence[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    url = f"http://images.stillpoint.invalid:{site.port}/image.png"
    assert download_image(url, 10, LOOPBACK_ALLOWED, resolver=resolver) == site.image
    assert lookups == ["images.stillpoint.invalid"]
    assert site.requests == [("/image.png", f"images.stillpoint.invalid:{site.port}")]


def test_a_name_with_any_internal_address_is_refused_before_connecting(site: _Site) -> None:
    def resolver(host: str, port: int) -> Sequence[str]:
        return ["8.8.8.8", "10.0.0.7"]

    with pytest.raises(ProviderCallError) as raised:
        download_image(f"http://mixed.example:{site.port}/image.png", 10, DownloadPolicy(), resolver=resolver)
    assert raised.value.kind is ProviderFailureKind.REJECTED
    assert site.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/image.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/image.png",
        "http://192.168.1.1/image.png",
        "http://100.64.0.1/image.png",
        "http://0.0.0.0/image.png",
        "http://[::1]/image.png",
        "http://[::ffff:127.0.0.1]/image.png",
        "http://[fe80::1]/image.png",
        "http://[fd00::1]/image.png",
        "http://[2002:7f00:1::]/image.png",
        "http://[64:ff9b::a00:1]/image.png",
        "http://240.0.0.1/image.png",
        "http://224.0.0.1/image.png",
    ],
)
def test_internal_and_reserved_addresses_are_refused(url: str) -> None:
    with pytest.raises(ProviderCallError) as raised:
        download_image(url, 1, DownloadPolicy())
    assert raised.value.kind is ProviderFailureKind.REJECTED


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.png", "http://user:pw@example.com/"]
)
def test_urls_that_are_not_plain_http_are_refused(url: str) -> None:
    with pytest.raises(ProviderCallError) as raised:
        download_image(url, 1, DownloadPolicy())
    assert raised.value.kind is ProviderFailureKind.REJECTED


def test_public_addresses_are_public_and_an_allowance_is_per_ip_version() -> None:
    assert is_public(ipaddress.ip_address("8.8.8.8"))
    assert is_public(ipaddress.ip_address("2606:4700:4700::1111"))
    # An IPv6 network whose bits an IPv4 address happens to match allows no IPv4 address.
    policy = DownloadPolicy(allowed_networks=(ipaddress.ip_network("::/96"),))
    assert not policy.permits(ipaddress.ip_address("127.0.0.1"))
    assert LOOPBACK_ALLOWED.permits(ipaddress.ip_address("::ffff:127.0.0.1"))


def test_a_declared_length_over_the_limit_is_refused(site: _Site) -> None:
    with pytest.raises(ProviderCallError) as raised:
        download_image(f"http://127.0.0.1:{site.port}/huge.png", 10, LOOPBACK_ALLOWED)
    assert raised.value.kind is ProviderFailureKind.REJECTED
    assert "50 MiB" in raised.value.message


def test_the_body_is_cut_at_the_limit(site: _Site) -> None:
    site.image = _png(400, 400)
    small = DownloadPolicy(allowed_networks=LOOPBACK_ALLOWED.allowed_networks, max_bytes=100)
    with pytest.raises(ProviderCallError) as raised:
        download_image(f"http://127.0.0.1:{site.port}/image.png", 10, small)
    assert raised.value.kind is ProviderFailureKind.REJECTED


def _png_header_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and header that claims `width` x `height`, with a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding() -> None:
    # 40000 x 40000 RGB would be 4.8 GB decoded; the file is a hundred bytes, and Pillow's own check in
    # Image.open (twice its limit) or ours (from the header) refuses it before a pixel is unpacked.
    with pytest.raises(ImageRejectedError, match="limit"):
        as_rgb_png(_png_header_claiming(40_000, 40_000))


def test_an_image_just_over_the_budget_is_refused_and_one_within_is_decoded() -> None:
    with pytest.raises(ImageRejectedError, match="over the limit"):
        as_rgb_png(_png_header_claiming(4097, 4096))
    assert as_rgb_png(_png(32, 32)) == _png(32, 32)


def test_formats_providers_do_not_answer_with_are_not_decoded() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="BMP")
    with pytest.raises(ImageRejectedError):
        as_rgb_png(buffer.getvalue())
    with pytest.raises(ImageRejectedError):
        as_rgb_png(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")


def test_jpeg_and_webp_become_rgb_png() -> None:
    for image_format in ("JPEG", "WEBP"):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 8), (200, 100, 50)).save(buffer, format=image_format)
        with Image.open(io.BytesIO(as_rgb_png(buffer.getvalue()))) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (16, 8))


def test_the_process_wide_limit_makes_pillows_bomb_warning_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    with warnings.catch_warnings():
        enforce_decoding_limits()
        assert MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS
        # Between the limit and twice it, Pillow only warns: here the warning is raised.
        with pytest.raises(Image.DecompressionBombWarning):
            Image.open(io.BytesIO(_png_header_claiming(5000, 5000)))


def test_allowed_networks_are_read_from_configuration(tmp_path: Path) -> None:
    default = ContentConfig.from_environment(Environment({}), var_root=tmp_path)
    assert default.image_download.allowed_networks == ()
    allowed = ContentConfig.from_environment(
        Environment({"STILLPOINT_IMAGE_DOWNLOAD_ALLOWED_NETWORKS": "127.0.0.1/32, 10.1.0.0/16"}),
        var_root=tmp_path,
    )
    assert allowed.image_download.allowed_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.1.0.0/16"),
    )
    with pytest.raises(ConfigError, match="STILLPOINT_IMAGE_DOWNLOAD_ALLOWED_NETWORKS"):
        ContentConfig.from_environment(
            Environment({"STILLPOINT_IMAGE_DOWNLOAD_ALLOWED_NETWORKS": "localhost"}), var_root=tmp_path
        )


def test_the_token_cap_is_configurable_within_bounds(tmp_path: Path) -> None:
    config = ContentConfig.from_environment(
        Environment({"STILLPOINT_TRANSCRIPT_MAX_TOKENS": "2000"}), var_root=tmp_path
    )
    assert config.transcript_max_output_tokens == 2000
    with pytest.raises(ConfigError, match="STILLPOINT_TRANSCRIPT_MAX_TOKENS"):
        ContentConfig.from_environment(
            Environment({"STILLPOINT_TRANSCRIPT_MAX_TOKENS": "10"}), var_root=tmp_path
        )
