"""The gateway's view of conversations and meditations, independent of any wire format."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime

from services.image_sizes import LANDSCAPE_SIZE_PIXELS, SQUARE_SIZE_PIXELS


class ImageAspect(enum.StrEnum):
    """The generated image's shape, which is also the ENHANCED video's."""

    SQUARE = "square"
    LANDSCAPE = "landscape"

    @property
    def size_pixels(self) -> tuple[int, int]:
        """Width and height of the generated image."""
        return SQUARE_SIZE_PIXELS if self is ImageAspect.SQUARE else LANDSCAPE_SIZE_PIXELS


class MeditationState(enum.StrEnum):
    """A meditation job's lifecycle."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Whether the job will produce no more events."""
        return self is not MeditationState.RUNNING


@dataclass(frozen=True)
class Message:
    """One turn of a conversation; role is user, assistant or system."""

    role: str
    text: str
    create_time: datetime | None = None


@dataclass(frozen=True)
class Conversation:
    """A stored conversation."""

    name: str
    title: str
    messages: tuple[Message, ...]
    create_time: datetime


@dataclass(frozen=True)
class MeditationOptions:
    """How one job is tuned."""

    image_aspect: ImageAspect = ImageAspect.LANDSCAPE
    skip_cache: bool = False

    def to_json(self) -> str:
        """The options as stored with the job."""
        return json.dumps({"image_aspect": self.image_aspect.value, "skip_cache": self.skip_cache})

    @classmethod
    def from_json(cls, text: str) -> MeditationOptions:
        """Reads options stored with a job; unknown or missing keys take their defaults."""
        values = json.loads(text or "{}")
        return cls(
            image_aspect=ImageAspect(values.get("image_aspect", ImageAspect.LANDSCAPE.value)),
            skip_cache=bool(values.get("skip_cache", False)),
        )


@dataclass(frozen=True)
class Meditation:
    """A meditation job and its assets."""

    name: str
    conversation: str
    state: MeditationState
    options: MeditationOptions
    transcript: str
    image_uri: str
    narration_uri: str
    quick_video_uri: str
    enhanced_video_uri: str
    failure_message: str
    last_sequence: int
    create_time: datetime
