"""The one OpenAI (or OpenAI-compatible) client a process uses, its model check, and how its failures read."""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING

from services.environment import ConfigError, Environment

if TYPE_CHECKING:
    # Imported where a client is made or its errors read, not here: the SDK costs about 0.7 s of CPU to
    # import, which every process (the gateway, and content and media with offline providers) would pay at
    # each start without ever calling it.
    import openai

logger = logging.getLogger(__name__)

# The SDK reads OPENAI_BASE_URL itself when given None, and takes an empty value literally: always pass one.
DEFAULT_BASE_URL = "https://api.openai.com/v1"
# A configured model retiring this soon is worth a warning at every start.
SHUTDOWN_WARNING_DAYS = 30
# The models of the speech endpoint (`/v1/audio/speech`), which shuts down with them on 2027-01-06; their
# successor is the Realtime API.
SPEECH_ENDPOINT_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
SPEECH_ENDPOINT_SHUTDOWN_DATE = date(2027, 1, 6)
# Retirements OpenAI has announced, for a listing that carries no `shutdown_date` (another compatible server,
# or a listing that does not date the model yet).
ANNOUNCED_SHUTDOWN_DATES: dict[str, date] = dict.fromkeys(
    SPEECH_ENDPOINT_MODELS, SPEECH_ENDPOINT_SHUTDOWN_DATE
)


class ProviderFailureKind(enum.StrEnum):
    """What went wrong with a provider call, in the terms a caller acts on."""

    CREDENTIALS = "credentials"
    MODEL = "model"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    REJECTED = "rejected"


class ProviderCallError(Exception):
    """A provider call failed; `message` is safe to show a client (it never holds the key)."""

    def __init__(self, kind: ProviderFailureKind, message: str, *, is_rate_limited: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        # An UNAVAILABLE failure because the provider refused our rate: told apart in the metrics, where
        # it calls for a higher quota rather than patience.
        self.is_rate_limited = is_rate_limited


@dataclass(frozen=True)
class ConfiguredModel:
    """A model name and the variable that set it, so messages can say what to change."""

    name: str
    variable: str


@dataclass(frozen=True)
class OpenAISettings:
    """How to reach the API; read once at start-up."""

    api_key: str
    base_url: str | None
    max_retries: int

    def __repr__(self) -> str:
        # A settings object may end up in a log line or a traceback: never show the key.
        return f"OpenAISettings(api_key='***', base_url={self.base_url!r}, max_retries={self.max_retries})"


def read_openai_settings(environment: Environment) -> OpenAISettings:
    """Reads the SDK's own variables; called only when some provider is `openai`, so the key is required."""
    api_key = environment.text("OPENAI_API_KEY", "")
    if not api_key:
        raise ConfigError("OPENAI_API_KEY is not set: an `openai` provider needs it (or choose `offline`)")
    base_url = environment.text("OPENAI_BASE_URL", "") or None
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"OPENAI_BASE_URL={base_url!r} is not an http(s) URL")
    return OpenAISettings(
        api_key=api_key,
        base_url=base_url,
        # Each retry of an image or speech call costs money: keep them few (the SDK's default is 2).
        max_retries=environment.integer("STILLPOINT_OPENAI_MAX_RETRIES", 2, minimum=0, maximum=5),
    )


def make_client(settings: OpenAISettings) -> openai.AsyncOpenAI:
    """The process's one client: made inside the running loop, closed at shutdown."""
    import openai

    return openai.AsyncOpenAI(
        api_key=settings.api_key,
        base_url=settings.base_url or DEFAULT_BASE_URL,
        max_retries=settings.max_retries,
    )


def classify(error: Exception, model: ConfiguredModel) -> ProviderCallError:
    """Turns an SDK error into a failure whose message names what to fix, never the key."""
    import openai

    # APITimeoutError is an APIConnectionError: ask the narrower question first.
    if isinstance(error, openai.APITimeoutError):
        return ProviderCallError(ProviderFailureKind.TIMEOUT, "the OpenAI API did not answer in time")
    if isinstance(error, openai.APIConnectionError):
        return unreachable()
    if isinstance(error, openai.APIStatusError):
        return classify_status(error.status_code, model)
    return ProviderCallError(
        ProviderFailureKind.UNAVAILABLE, f"the OpenAI call failed ({type(error).__name__})"
    )


def classify_status(status_code: int, model: ConfiguredModel) -> ProviderCallError:
    """The failure an HTTP status means, whether an HTTP call or a WebSocket handshake answered it."""
    if status_code in (401, 403):
        return ProviderCallError(
            ProviderFailureKind.CREDENTIALS,
            "the OpenAI API rejected the key: check OPENAI_API_KEY (and OPENAI_BASE_URL for another server)",
        )
    if status_code == 404:
        return _unknown_model(model)
    if status_code == 429:
        return _rate_limited()
    if status_code >= 500:
        return ProviderCallError(
            ProviderFailureKind.UNAVAILABLE, "the OpenAI API is failing; try again shortly"
        )
    return ProviderCallError(
        ProviderFailureKind.REJECTED, f"the OpenAI API refused the request ({status_code})"
    )


def classify_error_body(
    error_type: str | None, code: str | None, model: ConfiguredModel
) -> ProviderCallError:
    """The failure an OpenAI error object (`type`, `code`) means where no HTTP status comes with it: the
    `error` events and failed responses of a Realtime WebSocket."""
    if code == "invalid_api_key" or error_type == "authentication_error":
        return classify_status(401, model)
    if code == "model_not_found":
        return _unknown_model(model)
    if code == "rate_limit_exceeded" or error_type in ("rate_limit_error", "requests", "tokens"):
        return _rate_limited()
    if error_type == "server_error":
        return classify_status(500, model)
    return ProviderCallError(
        ProviderFailureKind.REJECTED,
        f"the OpenAI API refused the request ({code or error_type or 'no code'})",
    )


def unreachable() -> ProviderCallError:
    """The failure of a call that never reached the API."""
    return ProviderCallError(
        ProviderFailureKind.UNAVAILABLE, "the OpenAI API could not be reached; try again shortly"
    )


def _unknown_model(model: ConfiguredModel) -> ProviderCallError:
    return ProviderCallError(
        ProviderFailureKind.MODEL,
        f"the model {model.name!r} is unknown or retired at the provider: "
        f"set {model.variable} to a served model",
    )


def _rate_limited() -> ProviderCallError:
    return ProviderCallError(
        ProviderFailureKind.UNAVAILABLE,
        "the OpenAI API is rate limiting us; try again shortly",
        is_rate_limited=True,
    )


async def check_models(
    client: openai.AsyncOpenAI, models: Iterable[ConfiguredModel], *, today: date | None = None
) -> list[str]:
    """Lists the provider's models and returns a warning for each configured one missing or retiring soon."""
    import openai

    # Here, not at the top: services.metrics reads this module's failure kinds.
    from services.metrics import MODEL_SHUTDOWN_TIMESTAMP_SECONDS

    today = today or datetime.now(UTC).date()
    try:
        served = {model.id: model async for model in client.models.list()}
    except openai.OpenAIError as error:
        return [f"could not list models to check them: {classify(error, ConfiguredModel('', '')).message}"]
    warnings = []
    for model in models:
        found = served.get(model.name)
        if found is None:
            warnings.append(f"{model.variable}={model.name} is not served by the provider")
            continue
        shutdown = _shutdown_date(
            getattr(found, "shutdown_date", None) or (found.model_extra or {}).get("shutdown_date")
        ) or announced_shutdown_date(model.name)
        if shutdown is not None:
            MODEL_SHUTDOWN_TIMESTAMP_SECONDS.labels(model=model.name, variable=model.variable).set(
                datetime.combine(shutdown, time(), UTC).timestamp()
            )
        if shutdown is not None and shutdown <= today + timedelta(days=SHUTDOWN_WARNING_DAYS):
            verb = "was retired" if shutdown <= today else "retires"
            warnings.append(
                f"{model.variable}={model.name} {verb} on {shutdown.isoformat()}: choose a replacement"
            )
    for warning in warnings:
        logger.warning("model check: %s", warning)
    return warnings


def announced_shutdown_date(model_name: str) -> date | None:
    """The day OpenAI said the model retires, if it said so."""
    name = base_model(model_name, ANNOUNCED_SHUTDOWN_DATES)
    return None if name is None else ANNOUNCED_SHUTDOWN_DATES[name]


def base_model(model_name: str, names: Iterable[str]) -> str | None:
    """The one of `names` that `model_name` is, or is a dated snapshot of (`tts-1-1106` of `tts-1`)."""
    matches = [name for name in names if model_name == name or model_name.startswith(f"{name}-")]
    # `tts-1-hd` is both itself and, by its prefix, a `tts-1`: the longest name is the model.
    return max(matches, key=len, default=None)


def _shutdown_date(value: object) -> date | None:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).date()
    return None
