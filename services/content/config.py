"""The content service's configuration, read once at start-up."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from services.content.conversations import MAX_MESSAGE_CHARS
from services.content.image_download import DownloadPolicy, IPNetwork
from services.content.migrate import default_sqlite_file
from services.content.repository import MESSAGE_ENVELOPE_BYTES, ConversationLimits
from services.content.spoken_safety import DEFAULT_CRISIS_RESOURCE_TEXT, validate_resource_text
from services.database import PoolSettings, read_database_url, read_pool_settings
from services.environment import ConfigError, Environment
from services.log_context import LOG_FORMATS
from services.metrics import METRICS_OFF, MetricsSettings, read_metrics_settings
from services.openai_api import ConfiguredModel, OpenAISettings, read_openai_settings
from services.storage.factory import StorageSettings, read_storage_settings
from services.tls import InternalTls, read_internal_callers, read_internal_tls

PROVIDERS = ("offline", "openai")
# What OpenAI serves on 2026-11-21: gpt-6-luna replaces the gpt-4o class; DALL-E and gpt-image-1 are gone.
DEFAULT_TRANSCRIPT_MODEL = "gpt-6-luna"
DEFAULT_IMAGE_MODEL = "gpt-image-2.5-flare"
_SIZE = re.compile(r"^(auto|\d{2,5}x\d{2,5})$")
# A conversation can always take one message at its longest (4 UTF-8 bytes a character at most)...
_MIN_CONVERSATION_BYTES = 4 * MAX_MESSAGE_CHARS + MESSAGE_ENVELOPE_BYTES
# ...and GetConversation's response always fits the 4 MiB a gRPC client receives by default, with room for
# the title and the names.
_MAX_CONVERSATION_BYTES = 3 * 1024 * 1024

# A 500-word script is about 700 tokens; reasoning models spend theirs from the same allowance.
DEFAULT_MAX_OUTPUT_TOKENS = 4000


@dataclass(frozen=True)
class ContentConfig:
    """Everything the content service needs to start."""

    port: int
    # The interface it listens on: loopback unless the deployment says otherwise (only the gateway calls it).
    bind_host: str
    # Mutual TLS with the internal CA: only callers with a certificate it signed get in. None: plaintext,
    # for loopback-only development.
    internal_tls: InternalTls | None
    # With mutual TLS, the certificate names (common name or subjectAltName) that may call: the gateway's by
    # default. Another certificate the CA signed (a sibling service's) is refused with PERMISSION_DENIED.
    internal_callers: frozenset[str]
    database_url: str
    database_pool: PoolSettings
    storage: StorageSettings
    cache_ttl_seconds: float
    painter_workers: int
    grace_seconds: float
    max_concurrent_rpcs: int
    log_level: str
    # STILLPOINT_LOG_FORMAT: text or json (services.serving.LOG_FORMATS).
    log_format: str
    transcript_provider: str
    image_provider: str
    openai: OpenAISettings | None
    transcript_model: ConfiguredModel
    image_model: ConfiguredModel
    image_size_landscape: str
    image_size_square: str
    fallback_to_offline: bool
    transcript_timeout_seconds: float
    image_timeout_seconds: float
    transcript_max_output_tokens: int
    image_download: DownloadPolicy
    redis_url: str | None
    cache_lock_timeout_seconds: float
    pregenerate_prompts_file: Path | None
    pregenerate_hour_utc: int | None
    crisis_resource_text: str = DEFAULT_CRISIS_RESOURCE_TEXT
    conversation_limits: ConversationLimits = field(default_factory=ConversationLimits)
    # Where /metrics is served; off (port 0) unless STILLPOINT_METRICS_PORT is set.
    metrics: MetricsSettings = METRICS_OFF

    @classmethod
    def from_environment(cls, environment: Environment, *, var_root: Path) -> ContentConfig:
        """Reads the variables, failing fast with the name of the first bad one."""
        transcript_provider = environment.choice("STILLPOINT_TRANSCRIPT_PROVIDER", "offline", PROVIDERS)
        image_provider = environment.choice("STILLPOINT_IMAGE_PROVIDER", "offline", PROVIDERS)
        uses_openai = "openai" in (transcript_provider, image_provider)
        internal_tls = read_internal_tls(environment)
        bind_host = environment.bind_host("STILLPOINT_CONTENT_BIND_HOST", "127.0.0.1")
        return cls(
            port=environment.port("STILLPOINT_CONTENT_PORT", 50052),
            bind_host=bind_host,
            metrics=read_metrics_settings(environment, default_bind_host=bind_host),
            internal_tls=internal_tls,
            internal_callers=read_internal_callers(environment, internal_tls),
            database_url=read_database_url(environment, default_sqlite_file(var_root)),
            database_pool=read_pool_settings(environment),
            storage=read_storage_settings(environment, var_root),
            cache_ttl_seconds=environment.seconds("STILLPOINT_CACHE_TTL_SECONDS", 3600.0),
            painter_workers=environment.integer("STILLPOINT_PAINTER_WORKERS", 1, minimum=1, maximum=16),
            grace_seconds=environment.seconds("STILLPOINT_GRACE_SECONDS", 10.0),
            # Past this, new RPCs get RESOURCE_EXHAUSTED at once instead of queueing without bound.
            max_concurrent_rpcs=environment.integer(
                "STILLPOINT_MAX_CONCURRENT_RPCS", 500, minimum=1, maximum=100_000
            ),
            log_level=environment.choice(
                "STILLPOINT_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
            ),
            log_format=environment.choice("STILLPOINT_LOG_FORMAT", "text", LOG_FORMATS),
            transcript_provider=transcript_provider,
            image_provider=image_provider,
            openai=read_openai_settings(environment) if uses_openai else None,
            transcript_model=ConfiguredModel(
                environment.text("STILLPOINT_TRANSCRIPT_MODEL", DEFAULT_TRANSCRIPT_MODEL),
                "STILLPOINT_TRANSCRIPT_MODEL",
            ),
            image_model=ConfiguredModel(
                environment.text("STILLPOINT_IMAGE_MODEL", DEFAULT_IMAGE_MODEL), "STILLPOINT_IMAGE_MODEL"
            ),
            image_size_landscape=_image_size(environment, "STILLPOINT_IMAGE_SIZE_LANDSCAPE", "1536x1024"),
            image_size_square=_image_size(environment, "STILLPOINT_IMAGE_SIZE_SQUARE", "1024x1024"),
            fallback_to_offline=environment.flag("STILLPOINT_FALLBACK_TO_OFFLINE", True),
            # The reference pipeline's budget for content generation: 300 s.
            transcript_timeout_seconds=environment.seconds("STILLPOINT_TRANSCRIPT_TIMEOUT_SECONDS", 300.0),
            image_timeout_seconds=environment.seconds("STILLPOINT_IMAGE_TIMEOUT_SECONDS", 300.0),
            # The cap on what one script may cost (and on a conversation that talks the model into rambling).
            transcript_max_output_tokens=environment.integer(
                "STILLPOINT_TRANSCRIPT_MAX_TOKENS", DEFAULT_MAX_OUTPUT_TOKENS, minimum=256, maximum=32_000
            ),
            image_download=DownloadPolicy(allowed_networks=_allowed_networks(environment)),
            redis_url=environment.redis_url("REDIS_URL"),
            # The lock is extended while its holder computes, so this only bounds how long a crashed
            # replica's lock keeps the others waiting.
            cache_lock_timeout_seconds=environment.seconds("STILLPOINT_CACHE_LOCK_TIMEOUT_SECONDS", 30.0),
            pregenerate_prompts_file=_prompts_file(environment),
            pregenerate_hour_utc=(
                environment.integer("STILLPOINT_PREGENERATE_HOUR_UTC", 0, minimum=0, maximum=23)
                if environment.text("STILLPOINT_PREGENERATE_HOUR_UTC", "")
                else None
            ),
            crisis_resource_text=_crisis_resource_text(environment),
            conversation_limits=ConversationLimits(
                max_conversations_per_owner=environment.integer(
                    "STILLPOINT_MAX_CONVERSATIONS_PER_OWNER", 1000, minimum=1, maximum=10_000_000
                ),
                max_conversation_bytes=environment.integer(
                    "STILLPOINT_MAX_CONVERSATION_BYTES",
                    ConversationLimits().max_conversation_bytes,
                    minimum=_MIN_CONVERSATION_BYTES,
                    maximum=_MAX_CONVERSATION_BYTES,
                ),
            ),
        )


def _crisis_resource_text(environment: Environment) -> str:
    """Where the grounding script points a listener in crisis for help; spoken aloud, so plain sentences."""
    name = "STILLPOINT_CRISIS_RESOURCE_TEXT"
    try:
        return validate_resource_text(environment.text(name, DEFAULT_CRISIS_RESOURCE_TEXT))
    except ValueError as error:
        raise ConfigError(f"{name} {error}") from None


def _prompts_file(environment: Environment) -> Path | None:
    value = environment.text("STILLPOINT_PREGENERATE_PROMPTS_FILE", "")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"STILLPOINT_PREGENERATE_PROMPTS_FILE={value!r} is not a readable file")
    return path


def _allowed_networks(environment: Environment) -> tuple[IPNetwork, ...]:
    """Networks an image URL may point into besides public addresses: none by default. The tests allow
    127.0.0.1/32 for their fake provider; a deployment might allow the LAN of a self-hosted server."""
    name = "STILLPOINT_IMAGE_DOWNLOAD_ALLOWED_NETWORKS"
    networks = []
    for entry in environment.text(name, "").split(","):
        if not entry.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"{name} has {entry.strip()!r}, not a network: list CIDRs such as 127.0.0.1/32,10.1.0.0/16"
            ) from None
    return tuple(networks)


def _image_size(environment: Environment, name: str, default: str) -> str:
    value = environment.text(name, default)
    if not _SIZE.fullmatch(value):
        raise ConfigError(f"{name}={value!r} is not WIDTHxHEIGHT (such as 1536x1024) or auto")
    return value
