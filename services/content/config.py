"""The content service's configuration, read once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.environment import Environment


@dataclass(frozen=True)
class ContentConfig:
    """Everything the content service needs to start."""

    port: int
    database_url: str
    storage_root: Path
    cache_ttl_seconds: float
    painter_workers: int
    grace_seconds: float
    log_level: str

    @classmethod
    def from_environment(cls, environment: Environment, *, var_root: Path) -> ContentConfig:
        """Reads the variables, failing fast with the name of the first bad one."""
        storage_root = environment.directory("STILLPOINT_STORAGE_DIR", var_root / "storage")
        default_database = f"sqlite+aiosqlite:///{var_root / 'stillpoint.db'}"
        return cls(
            port=environment.port("STILLPOINT_CONTENT_PORT", 50052),
            database_url=environment.text("DATABASE_URL", default_database),
            storage_root=storage_root,
            cache_ttl_seconds=environment.seconds("STILLPOINT_CACHE_TTL_SECONDS", 3600.0),
            painter_workers=environment.integer("STILLPOINT_PAINTER_WORKERS", 1, minimum=1, maximum=16),
            grace_seconds=environment.seconds("STILLPOINT_GRACE_SECONDS", 10.0),
            log_level=environment.choice(
                "STILLPOINT_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
            ),
        )
