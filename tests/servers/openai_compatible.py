"""An HTTP server on 127.0.0.1 that speaks enough of the OpenAI API for the real SDK, with faults and latency.

Run in-process (`OpenAICompatibleServer`) or as a process:

    python -m tests.servers.openai_compatible --host 127.0.0.1 --port 0 --config '{"latency": {...}}'

which prints `listening on http://HOST:PORT` once it accepts connections. `POST /_control/config` replaces the
behaviour of a running server; `GET /_control/requests` lists what it received.

The Realtime API's WebSocket is served at `/v1/realtime?model=...` (see tests/servers/openai_realtime.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import random
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from types import FrameType
from typing import Final, Literal, TypeVar, cast, get_args
from urllib.parse import parse_qs, urlsplit

import av
import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageOps
from websockets.http11 import Request as WebSocketRequest
from websockets.server import ServerProtocol

from services.content.painter import paint_landscape
from services.content.script_composer import compose_meditation
from services.image_sizes import SUPPORTED_SIZES_PIXELS
from services.media.errors import SpeechError
from services.media.speech import EspeakNarrator, Narration
from services.sentences import split_sentences
from tests.servers.http_base import TrackingHandler, TrackingHTTPServer
from tests.servers.openai_realtime import (
    RESPONSE_FAULTS,
    DroppedError,
    RealtimeClientEvent,
    RealtimeConnection,
    RealtimeHooks,
    ResponseFault,
)

Endpoint = Literal["models", "chat", "images", "speech", "realtime"]
ENDPOINTS: Final[tuple[Endpoint, ...]] = get_args(Endpoint)
# `status` and `hang` answer a request (for `realtime`, the WebSocket handshake); the others befall a Realtime
# response (see openai_realtime.ResponseFault).
FaultKind = Literal["status", "hang", "drop", "error", "rate_limit", "reword"]
_REQUEST_FAULTS: Final[tuple[FaultKind, ...]] = ("status", "hang")
SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]

DEFAULT_API_KEY: Final = "sk-test-stillpoint"
OWNER: Final = "stillpoint-test"
# The real API refuses longer speech input with a 400.
MAX_SPEECH_INPUT_CHARACTERS: Final = 4096
SPEECH_SAMPLE_RATE_HERTZ: Final = 24_000
IMAGE_SIZES: Final = ("1024x1024", "1536x1024", "1792x1024", "1024x1536", "auto")
FAULT_STATUSES: Final = frozenset({401, 404, 429, 500, 503})
_VOICE_NAMES: Final = "alloy ash ballad cedar coral echo fable marin nova onyx sage shimmer verse"
SPEECH_VOICES: Final = frozenset(_VOICE_NAMES.split())
_SPEECH_CONTENT_TYPES: Final[Mapping[SpeechFormat, str]] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# FFmpeg output arguments per format: what the real endpoint sends, at its 24 kHz mono.
_SPEECH_ENCODINGS: Final[Mapping[SpeechFormat, tuple[str, ...]]] = {
    "mp3": ("-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"),
    "opus": ("-c:a", "libopus", "-b:a", "32k", "-f", "ogg"),
    "aac": ("-c:a", "aac", "-b:a", "64k", "-f", "adts"),
    "flac": ("-c:a", "flac", "-f", "flac"),
    "wav": ("-c:a", "pcm_s16le", "-f", "wav"),
    "pcm": ("-c:a", "pcm_s16le", "-f", "s16le"),
}
_POST_ROUTES: Final[Mapping[str, Endpoint]] = {
    "/v1/chat/completions": "chat",
    "/v1/images/generations": "images",
    "/v1/audio/speech": "speech",
}
_WEBSOCKET_READ_BYTES: Final = 65_536
# How long a refused Realtime client has to answer the server's Close.
_CLOSING_HANDSHAKE_SECONDS: Final = 5.0
# Small enough that even a few seconds of MP3 goes out as several chunks.
_AUDIO_CHUNK_BYTES: Final = 4096
# Speech goes out as a real provider sends it, a write every few tens of milliseconds with what has been
# made since the last, not one write per chunk: without Nagle's algorithm to coalesce them, 4 KB writes
# would reach the client as a stream of tiny reads that no real provider sends.
_AUDIO_WRITE_INTERVAL_SECONDS: Final = 0.04
_CHAT_WORDS_PER_CHUNK: Final = 3
# A streamed answer's first piece arrives after this share of the configured latency.
_FIRST_PIECE_SHARE: Final = 0.1
# Speech latency scaled by input length never drops below this share of the configured latency.
_MIN_SPEECH_LATENCY_SHARE: Final = 0.05
# Any fixed time works; the SDK only needs an integer.
_MODEL_CREATED: Final = 1_767_225_600
_MAX_STORED_FILES: Final = 256
# What every image shows when the server paints once per size.
_ONE_PAINTING_PROMPT: Final = "a quiet lake at dawn"
# Sentences kept, each way: a few times a script's forty or so.
_MAX_CACHED_NARRATIONS: Final = 256
# What the sentence caches keep: narrations, or their PCM.
_Kept = TypeVar("_Kept")


class ConfigError(ValueError):
    """A configuration that does not follow the schema; the message names the bad field."""


@dataclass(frozen=True)
class ModelSpec:
    """A model the server offers; one whose shutdown date has passed answers like an unknown one."""

    id: str
    shutdown_date: date | None = None

    def is_retired(self, today: date) -> bool:
        return self.shutdown_date is not None and self.shutdown_date < today


@dataclass(frozen=True)
class LatencySpec:
    """How long an endpoint takes: fixed, or drawn from a seeded uniform range so runs are reproducible."""

    fixed_seconds: float | None = None
    min_seconds: float | None = None
    max_seconds: float | None = None
    seed: int = 0
    # Speech only: the latency is for an input of this many characters and scales with the input's length.
    scale_by_characters: int | None = None

    def __post_init__(self) -> None:
        is_ranged = self.min_seconds is not None or self.max_seconds is not None
        if (self.fixed_seconds is None) == (not is_ranged):
            raise ConfigError("latency needs either fixed_seconds or both min_seconds and max_seconds")
        if is_ranged and (self.min_seconds is None or self.max_seconds is None):
            raise ConfigError("latency needs both min_seconds and max_seconds")
        for name in ("fixed_seconds", "min_seconds", "max_seconds"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"latency {name} must be a finite number >= 0, not {value}")
        if (
            self.min_seconds is not None
            and self.max_seconds is not None
            and self.min_seconds > self.max_seconds
        ):
            raise ConfigError("latency min_seconds must not exceed max_seconds")
        if self.scale_by_characters is not None and self.scale_by_characters <= 0:
            raise ConfigError("latency scale_by_characters must be a positive integer")


@dataclass(frozen=True)
class FaultSpec:
    """A failure the endpoint answers with for its next `count` requests, before any later fault, once
    `after` requests it applies to have passed untouched."""

    kind: FaultKind
    status: int | None = None
    count: int = 1
    after: int = 0

    def __post_init__(self) -> None:
        if self.kind == "status" and self.status not in FAULT_STATUSES:
            raise ConfigError(
                f"a status fault needs status one of {sorted(FAULT_STATUSES)}, not {self.status}"
            )
        if self.kind == "hang" and self.status is not None:
            raise ConfigError("a hang fault takes no status")
        if self.count < 1:
            raise ConfigError(f"fault count must be at least 1, not {self.count}")
        if self.after < 0:
            raise ConfigError(f"fault after must be at least 0, not {self.after}")


DEFAULT_MODELS: Final[tuple[ModelSpec, ...]] = (
    ModelSpec("gpt-5.6-terra"),
    ModelSpec("gpt-image-2.5-flare"),
    ModelSpec("gpt-realtime-2.1-mini"),
    ModelSpec("gpt-4o-mini-tts", date(2027, 1, 6)),
    ModelSpec("tts-1", date(2027, 1, 6)),
    ModelSpec("tts-1-hd", date(2027, 1, 6)),
    ModelSpec("gpt-image-1", date(2026, 10, 23)),
)


@dataclass(frozen=True)
class ServerConfig:
    """Everything that shapes the server's answers; every field is optional in JSON."""

    api_key: str = DEFAULT_API_KEY
    models: tuple[ModelSpec, ...] = DEFAULT_MODELS
    latency: Mapping[Endpoint, LatencySpec] = field(default_factory=dict)
    faults: Mapping[Endpoint, tuple[FaultSpec, ...]] = field(default_factory=dict)
    # Replaces the composed meditation as every chat answer.
    chat_text: str | None = None
    # One painting per image size, whatever the prompt (make bench): a real image model paints on its own
    # machines, and fifty jobs' paintings here (half a CPU second each) took the services' cores.
    paints_once_per_size: bool = False

    def __post_init__(self) -> None:
        for endpoint, faults in self.faults.items():
            for fault in faults:
                if fault.kind in RESPONSE_FAULTS and endpoint != "realtime":
                    raise ConfigError(
                        f"a {fault.kind} fault befalls a Realtime response: list it under realtime"
                    )

    @classmethod
    def from_json(cls, text: str | bytes) -> ServerConfig:
        """Parses the JSON schema; raises ConfigError naming the first bad field."""
        try:
            data = json.loads(text or "{}")
        except json.JSONDecodeError as error:
            raise ConfigError(f"config is not valid JSON: {error}") from error
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: object) -> ServerConfig:
        config = _object(data, "config")
        _only_keys(
            config, {"api_key", "models", "latency", "faults", "chat_text", "paints_once_per_size"}, "config"
        )
        api_key = _optional_str(config, "api_key", "config") or DEFAULT_API_KEY
        models = DEFAULT_MODELS
        if config.get("models") is not None:
            models = tuple(
                _model(item, f"models[{i}]") for i, item in enumerate(_list(config["models"], "models"))
            )
        latency = {
            _endpoint(key, "latency"): _latency(value, f"latency.{key}")
            for key, value in _object(config.get("latency") or {}, "latency").items()
        }
        faults = {
            _endpoint(key, "faults"): tuple(
                _fault(item, f"faults.{key}[{i}]") for i, item in enumerate(_list(value, f"faults.{key}"))
            )
            for key, value in _object(config.get("faults") or {}, "faults").items()
        }
        return cls(
            api_key,
            models,
            latency,
            faults,
            _optional_str(config, "chat_text", "config"),
            _optional_bool(config, "paints_once_per_size", "config"),
        )

    def to_mapping(self) -> dict[str, object]:
        return {
            "api_key": self.api_key,
            "models": [
                {"id": m.id, "shutdown_date": m.shutdown_date.isoformat() if m.shutdown_date else None}
                for m in self.models
            ],
            "latency": {
                key: {name: value for name, value in vars(spec).items() if value is not None}
                for key, spec in self.latency.items()
            },
            "faults": {
                key: [{name: value for name, value in vars(f).items() if value is not None} for f in faults]
                for key, faults in self.faults.items()
            },
            "chat_text": self.chat_text,
            "paints_once_per_size": self.paints_once_per_size,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_mapping())


@dataclass
class RecordedRequest:
    """One API request as the server saw it; the Authorization header is never kept."""

    method: str
    path: str
    model: str | None = None
    # Chat only: whether the client asked for a stream.
    is_stream: bool | None = None
    # None until the server answers (and for ever for a hung request).
    status: int | None = None
    # The JSON body as sent, so tests can assert exactly what reached the provider.
    body: Mapping[str, object] | None = None

    def to_json_object(self) -> dict[str, object]:
        recorded: dict[str, object] = {"method": self.method, "path": self.path, "model": self.model}
        if self.is_stream is not None:
            recorded["stream"] = self.is_stream
        recorded["status"] = self.status
        return recorded


class OpenAICompatibleServer:
    """A ThreadingHTTPServer on its own thread; `start()` returns the base URL for `openai.AsyncOpenAI`."""

    def __init__(self, config: ServerConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._state = _ServerState(config or ServerConfig())
        self._host = host
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Binds and serves in the background; returns the API base URL (`http://HOST:PORT/v1`)."""
        if self._httpd is not None:
            raise RuntimeError("the server is already started")
        self._state.stopping.clear()
        self._httpd = _HTTPServer((self._host, self._port), _Handler, self._state)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openai-compatible",
            daemon=True,
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stops serving and releases every waiting handler, hung ones included, without waiting for them."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._state.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join()
        self._state.close()

    def configure(self, config: ServerConfig) -> None:
        """Replaces the behaviour from the next request on; fault queues and latency seeds start afresh."""
        self._state.configure(config)

    @property
    def config(self) -> ServerConfig:
        return self._state.config

    @property
    def origin(self) -> str:
        """`http://HOST:PORT`, for the control endpoints and served files."""
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{_url_host(str(host))}:{port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def received_requests(self) -> list[RecordedRequest]:
        return self._state.received_requests()

    def clear_requests(self) -> None:
        self._state.clear_requests()

    def realtime_events(self) -> list[RealtimeClientEvent]:
        """Every event clients sent over Realtime WebSockets, in order, with the connection it came on."""
        return self._state.realtime_events()

    def spoken_pcm(self, text: str) -> bytes:
        """The audio of a Realtime response reading `text` (16-bit mono PCM, 24 kHz), the same each time."""
        return self._state.speech_pcm(text)

    def file_downloads(self) -> list[tuple[str, str]]:
        """Each GET of a served image file, as (path, Host header), in order."""
        return self._state.file_downloads()

    def __enter__(self) -> OpenAICompatibleServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass
class _PendingFault:
    fault: FaultSpec
    remaining: int
    to_pass: int


class _ServerState:
    """What every handler thread shares: the config, fault queues, latency generators, files and the log."""

    def __init__(self, config: ServerConfig) -> None:
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._file_downloads: list[tuple[str, str]] = []
        self._files: OrderedDict[str, bytes] = OrderedDict()
        # Each by sentence: as espeak-ng speaks it, and resampled to 24 kHz PCM.
        self._narrations: OrderedDict[str, Narration] = OrderedDict()
        self._sentence_pcms: OrderedDict[str, bytes] = OrderedDict()
        self._narrator: EspeakNarrator | None = None
        self._realtime_events: list[RealtimeClientEvent] = []
        self._realtime_connections = 0
        self.configure(config)

    def configure(self, config: ServerConfig) -> None:
        with self._lock:
            self._config = config
            self._faults = {
                key: [_PendingFault(fault, fault.count, fault.after) for fault in faults]
                for key, faults in config.faults.items()
            }
            self._rngs = {key: random.Random(spec.seed) for key, spec in config.latency.items()}

    @property
    def config(self) -> ServerConfig:
        with self._lock:
            return self._config

    def take_fault(
        self, endpoint: Endpoint, kinds: Collection[FaultKind] = _REQUEST_FAULTS
    ) -> FaultSpec | None:
        """The fault for this request, if the first one queued for the endpoint is of `kinds` and due."""
        with self._lock:
            queue = self._faults.get(endpoint, [])
            if not queue or queue[0].fault.kind not in kinds:
                return None
            pending = queue[0]
            if pending.to_pass > 0:
                pending.to_pass -= 1
                return None
            pending.remaining -= 1
            if pending.remaining <= 0:
                queue.pop(0)
            return pending.fault

    def draw_latency_seconds(self, endpoint: Endpoint) -> tuple[float, LatencySpec | None]:
        with self._lock:
            spec = self._config.latency.get(endpoint)
            if spec is None:
                return 0.0, None
            if spec.fixed_seconds is not None:
                return spec.fixed_seconds, spec
            return self._rngs[endpoint].uniform(
                cast(float, spec.min_seconds), cast(float, spec.max_seconds)
            ), spec

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def set_status(self, request: RecordedRequest, status: int) -> None:
        with self._lock:
            request.status = status

    def received_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [RecordedRequest(**vars(request)) for request in self._requests]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._file_downloads.clear()
            self._realtime_events.clear()

    def number_realtime_connection(self) -> int:
        with self._lock:
            self._realtime_connections += 1
            return self._realtime_connections

    def record_realtime_event(self, event: RealtimeClientEvent) -> None:
        with self._lock:
            self._realtime_events.append(event)

    def realtime_events(self) -> list[RealtimeClientEvent]:
        with self._lock:
            return list(self._realtime_events)

    def record_file_download(self, path: str, host: str) -> None:
        with self._lock:
            self._file_downloads.append((path, host))

    def file_downloads(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._file_downloads)

    def store_file(self, data: bytes) -> str:
        file_id = uuid.uuid4().hex
        with self._lock:
            self._files[file_id] = data
            while len(self._files) > _MAX_STORED_FILES:
                self._files.popitem(last=False)
        return file_id

    def stored_file(self, file_id: str) -> bytes | None:
        with self._lock:
            return self._files.get(file_id)

    def speech_pcm(self, text: str) -> bytes:
        """The text spoken as 16-bit mono PCM at 24 kHz, what the Realtime API sends: each sentence's,
        joined."""
        return b"".join(self._sentence_pcm(sentence) for sentence in _sentences_of(text))

    def speech(self, text: str, audio_format: SpeechFormat, speed: float) -> bytes:
        """The text spoken in `audio_format` at `speed`, as /v1/audio/speech answers it."""
        if audio_format == "pcm" and speed == 1.0:
            return self.speech_pcm(text)
        return _encode_speech(self.narrate(text), audio_format, speed)

    def narrate(self, text: str) -> Narration:
        """The text as espeak-ng speaks it: each sentence spoken once and kept, then joined (each ends in the
        half second of silence espeak-ng leaves between sentences, so the joins fall where it puts them).

        A sentence at a time because `make bench`'s jobs all speak the same script, each cut into requests
        at different places: spoken a request at a time, fifty jobs' scripts were fifty syntheses, some 30
        CPU seconds that took a core from the services under test in the first seconds of the 50-job level,
        for work a real provider does on its own machines."""
        pieces = [self._narrate_sentence(sentence) for sentence in _sentences_of(text)]
        if len(pieces) == 1:
            return pieces[0]
        return Narration(b"".join(piece.pcm_s16le for piece in pieces), pieces[0].sample_rate_hertz)

    def _narrate_sentence(self, sentence: str) -> Narration:
        """Synthesises on this handler's thread through the one narrator, which serialises internally."""
        with self._lock:
            if (cached := _kept(self._narrations, sentence)) is not None:
                return cached
            if self._narrator is None:
                self._narrator = EspeakNarrator()
            narrator = self._narrator
        narration = asyncio.run(narrator.narrate(sentence))
        with self._lock:
            _keep(self._narrations, sentence, narration)
        return narration

    def _sentence_pcm(self, sentence: str) -> bytes:
        """One sentence at 24 kHz, resampled once (by libswresample in this process, as FFmpeg's aresample
        does: an FFmpeg process per sentence cost more of the cores the services are measured on than
        speaking it)."""
        with self._lock:
            if (cached := _kept(self._sentence_pcms, sentence)) is not None:
                return cached
        pcm = _resampled_pcm(self._narrate_sentence(sentence))
        with self._lock:
            _keep(self._sentence_pcms, sentence, pcm)
        return pcm

    def close(self) -> None:
        with self._lock:
            narrator, self._narrator = self._narrator, None
        if narrator is not None:
            narrator.close()


class _HTTPServer(TrackingHTTPServer[_ServerState]):
    """The shared threaded server, holding this fake's state."""


class _ApiError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
        self.headers = dict(headers or {})


class _HangupError(Exception):
    """The server is stopping: close the connection without an answer."""


class _Handler(TrackingHandler):
    server_version = "stillpoint-openai-compatible/1.0"
    server: _HTTPServer

    @property
    def _state(self) -> _ServerState:
        return self.server.state

    def _dispatch(self, method: str) -> None:
        self._recorded: RecordedRequest | None = None
        self._has_answered = False
        try:
            body = self._read_body()
            path = self.path.split("?", 1)[0]
            if path.startswith("/_control/"):
                self._control(method, path, body)
            elif path.startswith("/files/") and method == "GET":
                self._state.record_file_download(path, self.headers.get("Host") or "")
                self._serve_file(path.removeprefix("/files/"))
            elif path.startswith("/v1/"):
                self._api(method, path, body)
            else:
                raise _ApiError(404, f"Invalid URL ({method} {path})", code=None)
        except _ApiError as error:
            self._send_json(error.status, error.body, error.headers)
        except _HangupError:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            # A bug in this server: say so on stderr, and answer like the real API's 500 if still possible.
            traceback.print_exc()
            self.close_connection = True
            if not self._has_answered:
                failure = _ApiError(
                    500, "The server had an error while processing your request.", "server_error"
                )
                self._send_json(failure.status, failure.body)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # Control -------------------------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> None:
        if path == "/_control/config" and method == "POST":
            try:
                self._state.configure(ServerConfig.from_json(body))
            except ConfigError as error:
                raise _ApiError(400, str(error), param="config", code="invalid_config") from error
            self._send_json(200, self._state.config.to_mapping())
        elif path == "/_control/config" and method == "GET":
            self._send_json(200, self._state.config.to_mapping())
        elif path == "/_control/requests" and method == "GET":
            self._send_json(200, [request.to_json_object() for request in self._state.received_requests()])
        elif path == "/_control/requests" and method == "DELETE":
            self._state.clear_requests()
            self._send_json(200, [])
        else:
            raise _ApiError(404, f"Invalid URL ({method} {path})")

    def _serve_file(self, name: str) -> None:
        data = self._state.stored_file(name.removesuffix(".png"))
        if data is None or not name.endswith(".png"):
            raise _ApiError(404, "No such file.")
        self._send_bytes(200, data, "image/png")

    # API -----------------------------------------------------------------------------------------------

    def _api(self, method: str, path: str, body: bytes) -> None:
        route = _route(method, path)
        payload = _json_body(body) if method == "POST" else {}
        named_model = payload.get("model")
        if route == "realtime":
            named_model = parse_qs(urlsplit(self.path).query).get("model", [None])[0]
        model = named_model if isinstance(named_model, str) else None
        if route == "models" and path.startswith("/v1/models/"):
            model = path.removeprefix("/v1/models/")
        is_stream = bool(payload.get("stream")) if route == "chat" else None
        self._recorded = RecordedRequest(method, path, model, is_stream, body=payload or None)
        self._state.record(self._recorded)
        if route is None:
            raise _ApiError(404, f"Invalid URL ({method} {path})")
        config = self._state.config
        self._authorize(config.api_key)
        # A fault answers at once, before validation and latency, like an overloaded or failing front end.
        fault = self._state.take_fault(route)
        if fault is not None:
            self._inject(fault, model)
        if route == "realtime":
            self._realtime(config, model)
            return
        started = time.monotonic()
        latency_seconds, spec = self._state.draw_latency_seconds(route)
        if route == "models":
            self._list_models(config, path, latency_seconds, started)
        elif route == "chat":
            self._chat(config, payload, latency_seconds, started)
        elif route == "images":
            self._images(config, payload, latency_seconds, started)
        else:
            self._speech(config, payload, latency_seconds, spec, started)

    def _authorize(self, api_key: str) -> None:
        header = self.headers.get("Authorization") or ""
        scheme, _, provided = header.partition(" ")
        provided = provided.strip()
        if scheme.lower() == "bearer" and provided == api_key:
            return
        if not provided:
            raise _ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header"
                " using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        raise _incorrect_key(provided)

    def _inject(self, fault: FaultSpec, model: str | None) -> None:
        if fault.kind == "hang":
            self._state.stopping.wait()
            raise _HangupError
        if fault.status == 401:
            raise _incorrect_key(self._state.config.api_key + "-revoked")
        if fault.status == 404:
            raise _model_not_found(model or "unknown")
        if fault.status == 429:
            raise _ApiError(
                429,
                "Rate limit reached for requests. Please try again in 10ms.",
                error_type="requests",
                code="rate_limit_exceeded",
                headers={"retry-after-ms": "10"},
            )
        if fault.status == 503:
            raise _ApiError(
                503, "The engine is currently overloaded, please try again later.", "server_error"
            )
        raise _ApiError(
            500, "The server had an error while processing your request. Sorry about that!", "server_error"
        )

    def _sleep_until(self, deadline: float) -> None:
        # The provider's simulated latency, not synchronisation; a stopping server hangs up at once.
        remaining = deadline - time.monotonic()
        if remaining > 0 and self._state.stopping.wait(remaining):
            raise _HangupError

    def _list_models(self, config: ServerConfig, path: str, latency_seconds: float, started: float) -> None:
        today = datetime.now(UTC).date()
        offered = [_model_object(spec) for spec in config.models]
        self._sleep_until(started + latency_seconds)
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": offered})
            return
        # Retrieving one model answers like the other endpoints: a retired model is gone.
        _require_model(config, path.removeprefix("/v1/models/"), today)
        self._send_json(200, next(m for m in offered if m["id"] == path.removeprefix("/v1/models/")))

    def _chat(
        self, config: ServerConfig, payload: Mapping[str, object], latency_seconds: float, started: float
    ) -> None:
        model = _require_model(config, payload.get("model"), datetime.now(UTC).date())
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(
                400,
                "Missing required parameter: 'messages'.",
                param="messages",
                code="missing_required_parameter",
            )
        text = (
            config.chat_text
            if config.chat_text is not None
            else compose_meditation(_last_user_text(messages))
        )
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        usage = {
            "prompt_tokens": _estimate_tokens(json.dumps(messages)),
            "completion_tokens": _estimate_tokens(text),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not payload.get("stream"):
            self._sleep_until(started + latency_seconds)
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
            self._send_json(
                200, _completion(completion_id, created, model, "chat.completion", [choice], usage)
            )
            return
        stream_options = payload.get("stream_options")
        wants_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))

        def chunk(delta: Mapping[str, object], finish_reason: str | None) -> dict[str, object]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _completion(
                completion_id, created, model, "chat.completion.chunk", [choice], None, wants_usage
            )

        pieces = _chat_pieces(text)
        events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        events += [chunk({"content": piece}, None) for piece in pieces]
        events.append(chunk({}, "stop"))
        if wants_usage:
            events.append(_completion(completion_id, created, model, "chat.completion.chunk", [], usage))
        self._start_chunked(200, "text/event-stream; charset=utf-8", {"Cache-Control": "no-cache"})
        # The role chunk goes at once; the content takes the latency, its first piece after a tenth of it.
        schedule = [0.0, *_spread(latency_seconds, len(pieces))]
        schedule += [latency_seconds] * (len(events) - len(schedule))
        for offset, event in zip(schedule, events, strict=True):
            self._sleep_until(started + offset)
            self._write_chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
        self._write_chunk(b"data: [DONE]\n\n")
        self._end_chunked()

    def _images(
        self, config: ServerConfig, payload: Mapping[str, object], latency_seconds: float, started: float
    ) -> None:
        model = _require_model(config, payload.get("model"), datetime.now(UTC).date())
        prompt = payload.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _ApiError(
                400,
                "Missing required parameter: 'prompt'.",
                param="prompt",
                code="missing_required_parameter",
            )
        size = payload.get("size") or "auto"
        if size not in IMAGE_SIZES:
            raise _invalid_value("size", size, IMAGE_SIZES)
        count = payload.get("n") or 1
        if not isinstance(count, int) or not 1 <= count <= 10:
            raise _ApiError(
                400,
                f"Invalid 'n': expected an integer from 1 to 10, got {count}.",
                param="n",
                code="invalid_value",
            )
        is_gpt_image = model.startswith("gpt-image")
        response_format = payload.get("response_format")
        if is_gpt_image and "response_format" in payload:
            raise _ApiError(
                400,
                "Unknown parameter: 'response_format'.",
                param="response_format",
                code="unknown_parameter",
            )
        output_format = payload.get("output_format") or "png"
        if output_format not in ("png", "jpeg", "webp"):
            raise _invalid_value("output_format", output_format, ("png", "jpeg", "webp"))
        if not is_gpt_image and (response_format or "url") not in ("url", "b64_json"):
            raise _invalid_value("response_format", response_format, ("url", "b64_json"))
        width, height = (1024, 1024) if size == "auto" else (int(side) for side in str(size).split("x"))
        png = _painted(_ONE_PAINTING_PROMPT if config.paints_once_per_size else prompt, width, height)
        self._sleep_until(started + latency_seconds)
        created = int(time.time())
        if is_gpt_image:
            image = png if output_format == "png" else _convert_image(png, str(output_format))
            data = [{"b64_json": base64.b64encode(image).decode("ascii")}] * count
            # Roughly what a GPT image model bills for one high-quality image.
            output_tokens = 4160 * count
            quality = payload.get("quality") or "auto"
            self._send_json(
                200,
                {
                    "created": created,
                    "data": data,
                    "background": "opaque",
                    "output_format": output_format,
                    "quality": "high" if quality == "auto" else quality,
                    "size": f"{width}x{height}",
                    "usage": {
                        "input_tokens": _estimate_tokens(prompt),
                        "output_tokens": output_tokens,
                        "total_tokens": _estimate_tokens(prompt) + output_tokens,
                    },
                },
            )
            return
        if response_format == "b64_json":
            items = [{"b64_json": base64.b64encode(png).decode("ascii"), "revised_prompt": prompt}] * count
        else:
            origin = f"http://{self.headers.get('Host') or _url_host(str(self.server.server_address[0]))}"
            items = [
                {"url": f"{origin}/files/{self._state.store_file(png)}.png", "revised_prompt": prompt}
            ] * count
        self._send_json(200, {"created": created, "data": items})

    def _speech(
        self,
        config: ServerConfig,
        payload: Mapping[str, object],
        latency_seconds: float,
        spec: LatencySpec | None,
        started: float,
    ) -> None:
        _require_model(config, payload.get("model"), datetime.now(UTC).date())
        text = payload.get("input")
        if not isinstance(text, str) or not text:
            raise _ApiError(
                400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
            )
        if len(text) > MAX_SPEECH_INPUT_CHARACTERS:
            raise _ApiError(
                400,
                f"Invalid 'input': string too long. Expected a string with maximum length"
                f" {MAX_SPEECH_INPUT_CHARACTERS}, but got a string with length {len(text)} instead.",
                param="input",
                code="string_above_max_length",
            )
        voice = payload.get("voice")
        is_custom_voice = isinstance(voice, dict) and isinstance(voice.get("id"), str)
        if not is_custom_voice and voice not in SPEECH_VOICES:
            raise _invalid_value("voice", voice, tuple(sorted(SPEECH_VOICES)))
        audio_format = payload.get("response_format") or "mp3"
        if audio_format not in _SPEECH_ENCODINGS:
            raise _invalid_value("response_format", audio_format, tuple(_SPEECH_ENCODINGS))
        speed = payload.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
            raise _ApiError(
                400,
                f"Invalid 'speed': expected a number from 0.25 to 4.0, got {speed}.",
                param="speed",
                code="invalid_value",
            )
        latency_seconds = _scaled_latency(latency_seconds, spec, text)
        try:
            audio = self._state.speech(text, cast(SpeechFormat, audio_format), float(speed))
        except SpeechError as error:
            raise _ApiError(400, f"Invalid 'input': {error}.", param="input", code="invalid_value") from error
        pieces = [audio[i : i + _AUDIO_CHUNK_BYTES] for i in range(0, len(audio), _AUDIO_CHUNK_BYTES)]
        self._start_chunked(200, _SPEECH_CONTENT_TYPES[cast(SpeechFormat, audio_format)])
        for offset, piece in _at_intervals(_spread(latency_seconds, len(pieces)), pieces):
            self._sleep_until(started + offset)
            self._write_chunk(piece)
        self._end_chunked()

    def _realtime(self, config: ServerConfig, model: str | None) -> None:
        """Upgrades to a WebSocket and serves the Realtime API on it until either side closes it."""
        protocol = ServerProtocol(max_size=None)
        # http.server has read the request already: hand it to the protocol as it came, so that the protocol
        # parses and checks it and moves on to reading frames.
        head = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
        protocol.receive_data(f"{self.command} {self.path} {self.request_version}\r\n{head}\r\n".encode())
        request = next(event for event in protocol.events_received() if isinstance(event, WebSocketRequest))
        handshake = protocol.accept(request)
        protocol.send_response(handshake)
        self._mark(handshake.status_code)
        self.close_connection = True
        for data in protocol.data_to_send():
            self.wfile.write(data)
        if handshake.status_code != 101:
            return

        def take_fault() -> ResponseFault | None:
            fault = self._state.take_fault("realtime", RESPONSE_FAULTS)
            return cast(ResponseFault, fault.kind) if fault is not None else None

        def schedule(text: str, count: int) -> list[float]:
            latency_seconds, spec = self._state.draw_latency_seconds("realtime")
            return _spread(_scaled_latency(latency_seconds, spec, text), count)

        connection = RealtimeConnection(
            protocol,
            number=self._state.number_realtime_connection(),
            model=model or "",
            read=self._read_socket,
            write=self.wfile.write,
            hang_up=self._hang_up,
            hooks=RealtimeHooks(
                speak=self._state.speech_pcm,
                take_fault=take_fault,
                schedule=schedule,
                sleep_until=self._sleep_until,
                record=self._state.record_realtime_event,
                monotonic=time.monotonic,
            ),
        )
        today = datetime.now(UTC).date()
        if not any(spec.id == model and not spec.is_retired(today) for spec in config.models):
            refusal = _model_not_found(model or "")
            # A client that never answers the Close holds this thread no longer than this.
            self.connection.settimeout(_CLOSING_HANDSHAKE_SECONDS)
            connection.refuse("invalid_request_error", "model_not_found", str(refusal))
            return
        with contextlib.suppress(DroppedError):  # already hung up
            connection.serve()

    def _read_socket(self) -> bytes:
        try:
            return self.rfile.read1(_WEBSOCKET_READ_BYTES)
        except OSError:
            return b""

    def _hang_up(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # Responses -----------------------------------------------------------------------------------------

    def _mark(self, status: int) -> None:
        self._has_answered = True
        if self._recorded is not None:
            self._state.set_status(self._recorded, status)

    def _send_json(self, status: int, body: object, headers: Mapping[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(body).encode(), "application/json", headers)

    def _send_bytes(
        self, status: int, data: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self._mark(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _start_chunked(
        self, status: int, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self._mark(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")


def _route(method: str, path: str) -> Endpoint | None:
    if method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
        return "models"
    if method == "GET" and path == "/v1/realtime":
        return "realtime"
    return _POST_ROUTES.get(path) if method == "POST" else None


def _json_body(body: bytes) -> dict[str, object]:
    try:
        payload = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _ApiError(400, f"We could not parse the JSON body of your request. ({error})") from error
    if not isinstance(payload, dict):
        raise _ApiError(400, "We could not parse the JSON body of your request: expected an object.")
    return payload


def _incorrect_key(provided: str) -> _ApiError:
    return _ApiError(
        401,
        f"Incorrect API key provided: {_mask_key(provided)}. You can find your API key at"
        " https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


def _mask_key(key: str) -> str:
    """Like OpenAI: the first five and last four characters; short keys are hidden entirely."""
    return f"{key[:5]}****{key[-4:]}" if len(key) > 12 else "*" * len(key)


def _model_not_found(model: str) -> _ApiError:
    return _ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def _invalid_value(param: str, value: object, supported: Sequence[str]) -> _ApiError:
    return _ApiError(
        400,
        f"Invalid value: {value!r}. Supported values are: {', '.join(repr(s) for s in supported)}.",
        param=param,
        code="invalid_value",
    )


def _require_model(config: ServerConfig, model: object, today: date) -> str:
    if not isinstance(model, str) or not model:
        raise _ApiError(
            400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    if not any(spec.id == model and not spec.is_retired(today) for spec in config.models):
        raise _model_not_found(model)
    return model


def _model_object(spec: ModelSpec) -> dict[str, object]:
    return {
        "id": spec.id,
        "object": "model",
        "created": _MODEL_CREATED,
        "owned_by": OWNER,
        "shutdown_date": spec.shutdown_date.isoformat() if spec.shutdown_date else None,
    }


def _completion(
    completion_id: str,
    created: int,
    model: str,
    kind: str,
    choices: list[dict[str, object]],
    usage: Mapping[str, int] | None,
    has_usage_field: bool = True,
) -> dict[str, object]:
    completion: dict[str, object] = {
        "id": completion_id,
        "object": kind,
        "created": created,
        "model": model,
        "system_fingerprint": "fp_stillpoint",
        "choices": choices,
    }
    if has_usage_field:
        completion["usage"] = dict(usage) if usage is not None else None
    return completion


def _last_user_text(messages: Sequence[object]) -> str:
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
    return ""


def _chat_pieces(text: str) -> list[str]:
    """A few words per piece; the pieces join back into exactly `text`."""
    words = re.findall(r"\S+\s*", text)
    leading = text[: len(text) - len(text.lstrip())]
    pieces = [
        "".join(words[i : i + _CHAT_WORDS_PER_CHUNK]) for i in range(0, len(words), _CHAT_WORDS_PER_CHUNK)
    ]
    if pieces:
        pieces[0] = leading + pieces[0]
    elif leading:
        pieces = [leading]
    return pieces


def _scaled_latency(latency_seconds: float, spec: LatencySpec | None, text: str) -> float:
    """Speech latency, scaled by the input's length where the spec says so."""
    if spec is None or not spec.scale_by_characters:
        return latency_seconds
    return latency_seconds * max(len(text) / spec.scale_by_characters, _MIN_SPEECH_LATENCY_SHARE)


def _spread(total_seconds: float, count: int) -> list[float]:
    """When each of `count` pieces is due: the first after a tenth of the total, the rest evenly after it."""
    if count <= 0:
        return []
    first = total_seconds * _FIRST_PIECE_SHARE
    if count == 1:
        return [total_seconds]
    step = (total_seconds - first) / (count - 1)
    return [first + step * index for index in range(count)]


def _at_intervals(due: Sequence[float], pieces: Sequence[bytes]) -> list[tuple[float, bytes]]:
    """The pieces joined into writes at least `_AUDIO_WRITE_INTERVAL_SECONDS` apart, each sent when its
    last piece is due, so none goes early: the first piece goes alone, as its time to first byte is what a
    listener waits for, and the last when the whole latency has passed. Grouped from the end backwards, so
    the last write is never moved."""
    if not pieces:
        return []
    writes: list[tuple[float, bytes]] = []
    index = len(pieces) - 1
    while index > 0:
        send_at = due[index]
        first = index
        while first > 1 and due[first - 1] > send_at - _AUDIO_WRITE_INTERVAL_SECONDS:
            first -= 1
        writes.append((send_at, b"".join(pieces[first : index + 1])))
        index = first - 1
    writes.append((due[0], pieces[0]))
    writes.reverse()
    return writes


def _estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


# lru_cache alone lets every caller in until the first painting is kept: fifty image requests arriving
# together painted fifty times, seconds of the cores the services under test are measured on, where
# paints_once_per_size promises one painting per size.
_PAINTING: Final = threading.Lock()


def _painted(prompt: str, width: int, height: int) -> bytes:
    """`_paint`'s picture, painted once per prompt and size however many ask for it at once."""
    with _PAINTING:
        return _paint(prompt, width, height)


@lru_cache(maxsize=32)
def _paint(prompt: str, width: int, height: int) -> bytes:
    if (width, height) in SUPPORTED_SIZES_PIXELS:
        return paint_landscape(prompt, width, height)
    gradient = Image.linear_gradient("L").resize((width, height), Image.Resampling.BICUBIC)
    soft = ImageOps.colorize(gradient, black=(92, 107, 158), white=(237, 204, 189))
    buffer = io.BytesIO()
    soft.save(buffer, format="PNG")
    return buffer.getvalue()


def _convert_image(png: bytes, output_format: str) -> bytes:
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").save(buffer, format=output_format.upper(), quality=90)
    return buffer.getvalue()


def _resampled_pcm(narration: Narration) -> bytes:
    """The narration as 16-bit mono PCM at SPEECH_SAMPLE_RATE_HERTZ."""
    samples = np.frombuffer(narration.pcm_s16le, dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = narration.sample_rate_hertz
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SPEECH_SAMPLE_RATE_HERTZ)
    resampled = [*resampler.resample(frame), *resampler.resample(None)]
    return b"".join(bytes(piece.to_ndarray().astype("<i2").tobytes()) for piece in resampled)


def _encode_speech(narration: Narration, audio_format: SpeechFormat, speed: float) -> bytes:
    """Resamples to 24 kHz and encodes with FFmpeg into a seekable file, so headers carry the duration."""
    filters = [f"aresample={SPEECH_SAMPLE_RATE_HERTZ}"]
    # atempo takes 0.5 to 2 per instance; chaining covers the API's 0.25 to 4.
    remaining = speed
    while not 0.5 <= remaining <= 2.0:
        step = 2.0 if remaining > 2.0 else 0.5
        filters.append(f"atempo={step}")
        remaining /= step
    if remaining != 1.0:
        filters.append(f"atempo={remaining:.6f}")
    with tempfile.TemporaryDirectory(prefix="openai-speech-") as directory:
        output = Path(directory) / f"speech.{audio_format}"
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-protocol_whitelist",
            "file,pipe",
            "-f",
            "s16le",
            "-ar",
            str(narration.sample_rate_hertz),
            "-ac",
            "1",
            "-i",
            "pipe:0",
            "-af",
            ",".join(filters),
            "-ar",
            str(SPEECH_SAMPLE_RATE_HERTZ),
            "-ac",
            "1",
            "-map_metadata",
            "-1",
            "-fflags",
            "+bitexact",
            *_SPEECH_ENCODINGS[audio_format],
            "-y",
            str(output),
        ]
        result = subprocess.run(command, input=narration.pcm_s16le, capture_output=True, check=False)
        if result.returncode != 0:
            raise _ApiError(500, "The server had an error while processing your request.", "server_error")
        return output.read_bytes()


def _kept(cache: OrderedDict[str, _Kept], key: str) -> _Kept | None:
    """What `cache` keeps under `key`, marked as the most recently used; call it holding the state's lock."""
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _keep(cache: OrderedDict[str, _Kept], key: str, value: _Kept) -> None:
    """Keeps `value`, forgetting the least recently used past _MAX_CACHED_NARRATIONS; holding the lock."""
    cache[key] = value
    while len(cache) > _MAX_CACHED_NARRATIONS:
        cache.popitem(last=False)


def _sentences_of(text: str) -> list[str]:
    """The text's sentences as the services split them; a text with no sentence in it is one."""
    return split_sentences(text) or [text]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# Config parsing --------------------------------------------------------------------------------------------


def _object(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a JSON object")
    return cast(dict[str, object], value)


def _list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a JSON list")
    return cast(list[object], value)


def _only_keys(data: Mapping[str, object], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where} has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _optional_str(data: Mapping[str, object], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string")
    return value


def _optional_bool(data: Mapping[str, object], key: str, where: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false")
    return value


def _optional_number(data: Mapping[str, object], key: str, where: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key} must be a number")
    return float(value)


def _optional_int(data: Mapping[str, object], key: str, where: str) -> int | None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}.{key} must be an integer")
    return value


def _endpoint(key: str, where: str) -> Endpoint:
    if key not in ENDPOINTS:
        raise ConfigError(f"{where} has unknown endpoint {key!r}; use one of {', '.join(ENDPOINTS)}")
    return key


def _model(value: object, where: str) -> ModelSpec:
    data = _object(value, where)
    _only_keys(data, {"id", "shutdown_date"}, where)
    model_id = _optional_str(data, "id", where)
    if not model_id:
        raise ConfigError(f"{where}.id is required")
    shutdown = _optional_str(data, "shutdown_date", where)
    try:
        return ModelSpec(model_id, date.fromisoformat(shutdown) if shutdown else None)
    except ValueError as error:
        raise ConfigError(f"{where}.shutdown_date must be YYYY-MM-DD, not {shutdown!r}") from error


def _latency(value: object, where: str) -> LatencySpec:
    data = _object(value, where)
    _only_keys(data, {"fixed_seconds", "min_seconds", "max_seconds", "seed", "scale_by_characters"}, where)
    try:
        return LatencySpec(
            fixed_seconds=_optional_number(data, "fixed_seconds", where),
            min_seconds=_optional_number(data, "min_seconds", where),
            max_seconds=_optional_number(data, "max_seconds", where),
            seed=_optional_int(data, "seed", where) or 0,
            scale_by_characters=_optional_int(data, "scale_by_characters", where),
        )
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error


def _fault(value: object, where: str) -> FaultSpec:
    data = _object(value, where)
    _only_keys(data, {"kind", "status", "count", "after"}, where)
    kind = data.get("kind")
    if kind not in get_args(FaultKind):
        raise ConfigError(f"{where}.kind must be one of {', '.join(get_args(FaultKind))}, not {kind!r}")
    count = _optional_int(data, "count", where)
    try:
        return FaultSpec(
            cast(FaultKind, kind),
            _optional_int(data, "status", where),
            1 if count is None else count,
            _optional_int(data, "after", where) or 0,
        )
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error


# Process mode ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config", default="{}", help="ServerConfig as JSON")
    arguments = parser.parse_args(argv)
    try:
        config = ServerConfig.from_json(arguments.config)
    except ConfigError as error:
        parser.error(f"--config: {error}")
    stop_requested = threading.Event()

    def request_stop(_signal: int, _frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with OpenAICompatibleServer(config, arguments.host, arguments.port) as server:
        print(f"listening on {server.origin}", flush=True)
        while not stop_requested.wait(0.5):
            pass


if __name__ == "__main__":
    main()
