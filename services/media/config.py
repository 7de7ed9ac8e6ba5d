"""The media service's configuration, read once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.environment import Environment


@dataclass(frozen=True)
class MediaConfig:
    """Everything the media service needs to start."""

    port: int
    storage_root: Path
    work_root: Path
    narration_timeout_seconds: float
    video_timeout_seconds: float
    espeak_voice: str
    espeak_words_per_minute: int
    hardware_encoding: bool
    grace_seconds: float
    log_level: str

    @classmethod
    def from_environment(cls, environment: Environment, *, var_root: Path) -> MediaConfig:
        """Reads the variables, failing fast with the name of the first bad one."""
        return cls(
            port=environment.port("STILLPOINT_MEDIA_PORT", 50053),
            storage_root=environment.directory("STILLPOINT_STORAGE_DIR", var_root / "storage"),
            work_root=environment.directory("STILLPOINT_MEDIA_WORK_DIR", var_root / "work" / "media"),
            # The seeds' budgets: audio 60 s, video encoding 120 s.
            narration_timeout_seconds=environment.seconds("STILLPOINT_NARRATION_TIMEOUT_SECONDS", 60.0),
            video_timeout_seconds=environment.seconds("STILLPOINT_VIDEO_TIMEOUT_SECONDS", 120.0),
            espeak_voice=environment.text("STILLPOINT_ESPEAK_VOICE", "en-us"),
            espeak_words_per_minute=environment.integer(
                "STILLPOINT_ESPEAK_WORDS_PER_MINUTE", 125, minimum=80, maximum=450
            ),
            hardware_encoding=environment.flag("STILLPOINT_HARDWARE_ENCODING", True),
            grace_seconds=environment.seconds("STILLPOINT_GRACE_SECONDS", 10.0),
            log_level=environment.choice(
                "STILLPOINT_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
            ),
        )
