"""The gateway's configuration, read once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from services.database import PoolSettings, read_database_url, read_pool_settings
from services.environment import ConfigError, Environment
from services.gateway.authentication import SupabaseAuthSettings
from services.gateway.jobs import JobLimits
from services.gateway.migrate import default_sqlite_file
from services.gateway.open_streams import DEFAULT_MAX_STREAMS_PER_OWNER
from services.gateway.pagination import MIN_SECRET_CHARS
from services.gateway.pipeline import StageTimeouts
from services.log_context import LOG_FORMATS
from services.metrics import METRICS_OFF, MetricsSettings, read_metrics_settings
from services.tls import InternalTls, PublicTls, read_internal_tls, read_public_tls


@dataclass(frozen=True)
class AuthenticationConfig:
    """How callers are authenticated."""

    # STILLPOINT_AUTH=disabled lets every call in as one local owner: for local experiments only.
    is_disabled: bool
    supabase: SupabaseAuthSettings | None

    @classmethod
    def from_environment(cls, environment: Environment) -> AuthenticationConfig:
        """STILLPOINT_AUTH, SUPABASE_URL, SUPABASE_JWT_SECRET and STILLPOINT_SUPABASE_JWKS."""
        is_disabled = environment.choice("STILLPOINT_AUTH", "enabled", ("enabled", "disabled")) == "disabled"
        supabase_url = environment.text("SUPABASE_URL", "")
        if supabase_url and not supabase_url.startswith(("https://", "http://")):
            raise ConfigError(
                f"SUPABASE_URL={supabase_url!r} must start with https:// (http:// for local tests)"
            )
        secret = environment.text("SUPABASE_JWT_SECRET", "") or None
        if secret is not None and not supabase_url:
            raise ConfigError(
                "SUPABASE_JWT_SECRET is set without SUPABASE_URL: set both (the URL is the issuer)"
            )
        supabase = (
            SupabaseAuthSettings(
                url=supabase_url,
                jwt_secret=secret,
                is_jwks_used=environment.flag("STILLPOINT_SUPABASE_JWKS", True),
            )
            if supabase_url
            else None
        )
        return cls(is_disabled=is_disabled, supabase=supabase)


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs to start."""

    port: int
    # The job tables: the same PostgreSQL as the content service in production, its own SQLite file offline.
    database_url: str
    database_pool: PoolSettings
    content_address: str
    media_address: str
    timeouts: StageTimeouts
    grace_seconds: float
    max_concurrent_rpcs: int
    log_level: str
    # STILLPOINT_LOG_FORMAT: text or json (services.serving.LOG_FORMATS).
    log_format: str
    job_lease_seconds: float
    job_limits: JobLimits
    # With Redis, jobs are shared by every gateway replica through a Redis stream; without, in-process.
    redis_url: str | None
    # Who may call: API keys always; Supabase Auth users when SUPABASE_URL is set.
    authentication: AuthenticationConfig
    # The gateway's client certificate for content and media (mutual TLS), and TLS on its public port.
    internal_tls: InternalTls | None
    public_tls: PublicTls | None
    # The HMAC key of page tokens, the same on every replica; None: a random key per process, whose tokens
    # work only on the replica that issued them.
    page_token_secret: str | None = None
    # GenerateMeditation and WatchMeditation streams one owner may hold open at once, on each replica.
    max_streams_per_owner: int = DEFAULT_MAX_STREAMS_PER_OWNER
    # How long a finished meditation is kept before retention erases it (its files, record and log); None:
    # kept until its owner deletes its conversation.
    meditation_retention: timedelta | None = None
    # Where /metrics is served; off (port 0) unless STILLPOINT_METRICS_PORT is set.
    metrics: MetricsSettings = METRICS_OFF

    @classmethod
    def from_environment(cls, environment: Environment) -> GatewayConfig:
        """Reads the variables, failing fast with the name of the first bad one."""
        var_root = environment.directory("STILLPOINT_VAR_DIR", Path("var"))
        return cls(
            port=environment.port("STILLPOINT_GATEWAY_PORT", 50051),
            database_url=read_database_url(environment, default_sqlite_file(var_root)),
            database_pool=read_pool_settings(environment),
            content_address=environment.address("STILLPOINT_CONTENT_ADDRESS", "127.0.0.1:50052"),
            media_address=environment.address("STILLPOINT_MEDIA_ADDRESS", "127.0.0.1:50053"),
            # The reference pipeline's budgets: content generation 300 s, audio 60 s, video encoding 120 s.
            timeouts=StageTimeouts(
                source_seconds=environment.seconds("STILLPOINT_SOURCE_TIMEOUT_SECONDS", 10.0),
                transcript_seconds=environment.seconds("STILLPOINT_TRANSCRIPT_TIMEOUT_SECONDS", 300.0),
                image_seconds=environment.seconds("STILLPOINT_IMAGE_TIMEOUT_SECONDS", 300.0),
                narration_seconds=environment.seconds("STILLPOINT_NARRATION_TIMEOUT_SECONDS", 60.0),
                video_seconds=environment.seconds("STILLPOINT_VIDEO_TIMEOUT_SECONDS", 120.0),
            ),
            grace_seconds=environment.seconds("STILLPOINT_GRACE_SECONDS", 10.0),
            # Past this, new RPCs get RESOURCE_EXHAUSTED at once instead of queueing without bound.
            max_concurrent_rpcs=environment.integer(
                "STILLPOINT_MAX_CONCURRENT_RPCS", 500, minimum=1, maximum=100_000
            ),
            job_limits=JobLimits(
                max_jobs_per_owner=environment.integer(
                    "STILLPOINT_MAX_JOBS_PER_OWNER", 4, minimum=1, maximum=10_000
                ),
                # Admission takes people in rather than queueing them: a running job mostly waits on
                # providers, and its costly parts wait in media's own lanes (its first sentence ahead of
                # everything, its ENHANCED render behind), so one gateway starts everyone who arrives
                # together. Past this many, jobs wait in the queue for any replica with room.
                max_running_jobs=environment.integer(
                    "STILLPOINT_MAX_RUNNING_JOBS", 64, minimum=1, maximum=1000
                ),
                # Past this many waiting, new jobs get RESOURCE_EXHAUSTED instead of a wait without end.
                max_queued_jobs=environment.integer(
                    "STILLPOINT_MAX_QUEUED_JOBS", 200, minimum=1, maximum=1_000_000
                ),
                max_attempts=environment.integer("STILLPOINT_MAX_JOB_ATTEMPTS", 3, minimum=1, maximum=20),
                # What one owner's meditations may keep in storage before new ones are refused; 0: no limit.
                max_stored_bytes_per_owner=1024**2
                * environment.integer(
                    "STILLPOINT_MAX_STORED_MEGABYTES_PER_OWNER", 5 * 1024, minimum=0, maximum=100 * 1024**2
                ),
                retry_delay_seconds=environment.seconds(
                    "STILLPOINT_JOB_RETRY_DELAY_SECONDS", 2.0, minimum=0, maximum=600
                ),
            ),
            # Each open stream holds one of max_concurrent_rpcs for as long as its job runs: without this, one
            # caller could hold them all.
            max_streams_per_owner=environment.integer(
                "STILLPOINT_MAX_STREAMS_PER_OWNER", DEFAULT_MAX_STREAMS_PER_OWNER, minimum=1, maximum=100_000
            ),
            # How long a job stays with a gateway that stopped renewing (crashed) before another takes it.
            job_lease_seconds=environment.seconds(
                "STILLPOINT_JOB_LEASE_SECONDS", 30.0, minimum=3, maximum=3600
            ),
            redis_url=environment.redis_url("REDIS_URL"),
            authentication=AuthenticationConfig.from_environment(environment),
            internal_tls=read_internal_tls(environment),
            public_tls=read_public_tls(environment),
            page_token_secret=_page_token_secret(environment),
            meditation_retention=_meditation_retention(environment),
            # By default on every interface, as the gateway's own port: where it can be called, it can be
            # scraped.
            metrics=read_metrics_settings(environment, default_bind_host="0.0.0.0"),
            log_level=environment.choice(
                "STILLPOINT_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
            ),
            log_format=environment.choice("STILLPOINT_LOG_FORMAT", "text", LOG_FORMATS),
        )


def _page_token_secret(environment: Environment) -> str | None:
    """STILLPOINT_PAGE_TOKEN_SECRET: unset, or long enough to be an HMAC key."""
    secret = environment.text("STILLPOINT_PAGE_TOKEN_SECRET", "").strip()
    if not secret:
        return None
    if len(secret) < MIN_SECRET_CHARS:
        # Never the value: it is a secret, and this message reaches the log.
        raise ConfigError(
            f"STILLPOINT_PAGE_TOKEN_SECRET must be at least {MIN_SECRET_CHARS} characters "
            "(for example the output of `openssl rand -base64 48`)"
        )
    return secret


def _meditation_retention(environment: Environment) -> timedelta | None:
    """STILLPOINT_MEDITATION_RETENTION_DAYS: unset or 0 keeps finished meditations forever (the default)."""
    # Whole days, at most a century: a value meant in seconds (2592000 for 30 days) fails here instead.
    days = environment.integer("STILLPOINT_MEDITATION_RETENTION_DAYS", 0, minimum=0, maximum=36_500)
    return timedelta(days=days) if days else None
