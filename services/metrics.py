"""Prometheus metrics: the settings of each process's `/metrics` endpoint, and the domain metrics the
services record where things happen. No grpc here: the endpoint itself and gRPC's own per-method metrics are
services/rpc_metrics.py's.

The endpoint is off unless STILLPOINT_METRICS_PORT is set. Every metric is recorded by the serving process
itself: content's painter processes (services/content/__main__.py) record none, so no multiprocess mode is
needed; a worker process that records metrics would need prometheus-client's multiprocess mode.

Label values are bounded: stage, provider, encoder, cache and state names of this code, never an owner, a
meditation, a model-chosen string or a secret.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from services.environment import Environment
from services.openai_api import ProviderCallError

logger = logging.getLogger(__name__)

# Seconds, from a cache hit to a whole job's stream: prometheus-client's defaults stop at 10 s, and a
# job's GenerateMeditation stream, its stages and its encodes run for minutes.
DURATION_BUCKETS_SECONDS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)
# How many seconds an encode takes per second of media: well under 1 with a hardware encoder, above 1 when
# the encoder cannot keep up with real time.
ENCODE_SPEED_BUCKETS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class MetricsSettings:
    """Where the process serves `/metrics`; port 0 is off."""

    port: int
    bind_host: str

    @property
    def is_enabled(self) -> bool:
        """Whether the process serves `/metrics` at all."""
        return self.port != 0


# A process's settings when nothing says otherwise: no /metrics.
METRICS_OFF = MetricsSettings(port=0, bind_host="127.0.0.1")


def read_metrics_settings(environment: Environment, *, default_bind_host: str) -> MetricsSettings:
    """STILLPOINT_METRICS_PORT (unset or 0: off) and STILLPOINT_METRICS_BIND_HOST (by default the interface
    the service's own port listens on, so that a deployment that lets its gRPC port be reached lets its
    metrics be scraped without another variable)."""
    port = environment.port("STILLPOINT_METRICS_PORT", 0)
    bind_host = environment.bind_host("STILLPOINT_METRICS_BIND_HOST", default_bind_host)
    return MetricsSettings(port=port, bind_host=bind_host)


# ---- the domain metrics -------------------------------------------------------------------------------
# Defined once per process, at import; recording is cheap and harmless while the endpoint is off.

# The gateway: jobs and their stages.
STAGE_DURATION_SECONDS = Histogram(
    "stillpoint_stage_duration_seconds",
    "How long a job's stage took, by stage, the provider (or encoder) that did it, and how it ended.",
    ["stage", "provider", "outcome"],
    buckets=DURATION_BUCKETS_SECONDS,
)
TIME_TO_FIRST_PLAYABLE_SECONDS = Histogram(
    "stillpoint_time_to_first_playable_seconds",
    "From the start of a job's attempt to its first playable media (the live preview's playlist).",
    buckets=DURATION_BUCKETS_SECONDS,
)
TIME_TO_VIDEO_SECONDS = Histogram(
    "stillpoint_time_to_video_seconds",
    "From the start of a job's attempt to its stored video, by quality (quick, enhanced).",
    ["quality"],
    buckets=DURATION_BUCKETS_SECONDS,
)
JOBS_FINISHED = Counter(
    "stillpoint_jobs_finished",
    "Jobs that reached a final state, by that state (succeeded, failed, cancelled).",
    ["state"],
)
JOBS_RUNNING = Gauge("stillpoint_jobs_running", "Jobs running on this gateway now.")
JOB_RETRIES = Counter(
    "stillpoint_job_retries", "Failed job attempts handed back to the queue for another attempt."
)
JOBS_DEAD_LETTERED = Counter(
    "stillpoint_jobs_dead_lettered", "Jobs dead-lettered after their last attempt failed."
)
QUEUE_WAIT_SECONDS = Histogram(
    "stillpoint_queue_wait_seconds",
    "From a job's creation to the start of its first attempt: how long it waited in the queue.",
    buckets=DURATION_BUCKETS_SECONDS,
)
QUEUE_DEPTH = Gauge(
    "stillpoint_queue_depth", "Jobs waiting in the work queue, as this gateway last counted them."
)

# Content and media: caches and providers.
CACHE_REQUESTS = Counter(
    "stillpoint_cache_requests",
    "Result cache lookups by cache (transcripts, images) and result (hit, miss).",
    ["cache", "result"],
)
PROVIDER_CALLS = Counter(
    "stillpoint_provider_calls",
    "Provider calls by provider, capability (transcript, image, speech) and outcome: ok, rate_limited, or "
    "the failure's kind (credentials, model, unavailable, timeout, rejected).",
    ["provider", "capability", "outcome"],
)
PROVIDER_FALLBACKS = Counter(
    "stillpoint_provider_fallbacks",
    "Failed provider calls that the offline fallback took over, by the failed provider and capability.",
    ["provider", "capability"],
)

# Media: encoding and storage.
VIDEO_ENCODE_SECONDS = Histogram(
    "stillpoint_video_encode_seconds",
    "How long a video encode took, by encoder and render profile.",
    ["encoder", "profile"],
    buckets=DURATION_BUCKETS_SECONDS,
)
VIDEO_ENCODE_SECONDS_PER_MEDIA_SECOND = Histogram(
    "stillpoint_video_encode_seconds_per_media_second",
    "Encode time per second of the video encoded, by encoder and render profile (below 1: faster than "
    "real time).",
    ["encoder", "profile"],
    buckets=ENCODE_SPEED_BUCKETS,
)
ENCODER_PROCESS_ENDS = Counter(
    "stillpoint_media_encoder_process_ends",
    "Times media's encoder process ended without being stopped, by how: exited (a crash, killed for memory) "
    "or unanswered (killed after a request went unanswered). The narrations it held failed.",
    ["how"],
)
UPLOADED_BYTES = Counter(
    "stillpoint_uploaded_bytes",
    "Bytes written to asset storage, by backend (local, supabase) and kind of asset.",
    ["storage", "asset"],
)

# Every service with a database.
# The day each configured model retires (where OpenAI announced it, or the provider's listing says), so an
# alert can fire before a model that narrates or writes disappears: model and variable come from this
# process's configuration, a handful of values.
MODEL_SHUTDOWN_TIMESTAMP_SECONDS = Gauge(
    "stillpoint_model_shutdown_timestamp_seconds",
    "When a configured model retires (Unix time, midnight UTC), where the provider or OpenAI said.",
    ["model", "variable"],
)
DATABASE_CONNECTIONS_IN_USE = Gauge(
    "stillpoint_database_connections_in_use",
    "Connections of this process's database pool checked out now.",
)

# The kinds of stored asset, the first segment of a storage key (services/storage/base.py new_key); any
# other is counted as "other", so a label never carries more than a fixed set of values.
ASSET_KINDS = frozenset({"images", "narrations", "live", "videos"})


def asset_kind(key: str) -> str:
    """The label for a storage key's kind of asset: its first segment when it is a known kind."""
    kind = key.partition("/")[0]
    return kind if kind in ASSET_KINDS else "other"


def record_cache_lookup(cache: str, *, is_hit: bool) -> None:
    """Counts one lookup of the named cache (a caller that shared another's computation counts a hit)."""
    CACHE_REQUESTS.labels(cache=cache, result="hit" if is_hit else "miss").inc()


@contextlib.contextmanager
def provider_call(provider: str, capability: str) -> Iterator[None]:
    """Counts the provider call the block makes: ok, rate_limited, or its ProviderCallError's kind (auth
    failures are `credentials`, a missing model `model`). Any other exception
    (a cancellation, a bug) is not the provider's outcome and is not counted."""
    try:
        yield
    except ProviderCallError as error:
        outcome = "rate_limited" if error.is_rate_limited else error.kind.value
        PROVIDER_CALLS.labels(provider=provider, capability=capability, outcome=outcome).inc()
        raise
    PROVIDER_CALLS.labels(provider=provider, capability=capability, outcome="ok").inc()


def record_fallback(provider: str, capability: str) -> None:
    """Counts a failed call of `provider` that the offline fallback takes over."""
    PROVIDER_FALLBACKS.labels(provider=provider, capability=capability).inc()


def record_encoder_process_end(how: str) -> None:
    """Counts an end of media's encoder process that nobody asked for ("exited" or "unanswered")."""
    ENCODER_PROCESS_ENDS.labels(how=how).inc()


def record_upload(storage: str, key: str, size_bytes: int) -> None:
    """Counts the bytes of one asset written to `storage` (local, supabase)."""
    UPLOADED_BYTES.labels(storage=storage, asset=asset_kind(key)).inc(size_bytes)


def record_encode(encoder: str, profile: str, encode_seconds: float, media_seconds: float) -> None:
    """Records one video encode: its time, and its time per second of the video it made."""
    VIDEO_ENCODE_SECONDS.labels(encoder=encoder, profile=profile).observe(encode_seconds)
    if media_seconds > 0:
        VIDEO_ENCODE_SECONDS_PER_MEDIA_SECOND.labels(encoder=encoder, profile=profile).observe(
            encode_seconds / media_seconds
        )


def watch_database_pool(engine: AsyncEngine) -> None:
    """Reports the connections the process's engine has checked out of its pool, read at every scrape."""
    pool = engine.pool
    # services/database.py makes every engine with a bounded queue pool; another kind has no count to read.
    if isinstance(pool, QueuePool):
        DATABASE_CONNECTIONS_IN_USE.set_function(lambda: float(pool.checkedout()))
