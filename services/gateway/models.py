"""The gateway's view of conversations and meditations, independent of any wire format."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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


@dataclass(frozen=True)
class Meditation:
    """A meditation job and its assets."""

    name: str
    # The authenticated caller who asked for it; only they ever see it.
    owner: str
    conversation: str
    state: MeditationState
    options: MeditationOptions
    transcript: str
    # Where its assets are stored; a client is given URIs made from them when it reads the job.
    image_storage_key: str
    narration_storage_key: str
    quick_video_storage_key: str
    enhanced_video_storage_key: str
    failure_message: str
    last_sequence: int
    create_time: datetime
    # What its narration, live preview and videos take in storage, measured when it succeeded; 0 before.
    stored_bytes: int = 0
    # Someone asked to cancel it (recorded in the job store): a replica about to run it ends it instead.
    is_cancel_requested: bool = False
    # Made for the reader when the job is read (see asset_links), never stored.
    image_uri: str = ""
    narration_uri: str = ""
    quick_video_uri: str = ""
    enhanced_video_uri: str = ""


@dataclass(frozen=True)
class JobChanges:
    """The job fields an event changes; None leaves a field as it is."""

    state: MeditationState | None = None
    transcript: str | None = None
    image_storage_key: str | None = None
    narration_storage_key: str | None = None
    quick_video_storage_key: str | None = None
    enhanced_video_storage_key: str | None = None
    stored_bytes: int | None = None
    failure_message: str | None = None
    # Set by a failed or cancelled job's end where its stored assets are to go: the debt is recorded in the
    # end's own write, so a replica stopped (or its lease lost) between the end and the deletion still
    # leaves it to a janitor.
    asset_deletion_owed_time: datetime | None = None

    def as_columns(self) -> dict[str, Any]:
        """The changed columns and their values."""
        columns: dict[str, Any] = {
            name: value
            for name, value in (
                ("transcript", self.transcript),
                ("image_storage_key", self.image_storage_key),
                ("narration_storage_key", self.narration_storage_key),
                ("quick_video_storage_key", self.quick_video_storage_key),
                ("enhanced_video_storage_key", self.enhanced_video_storage_key),
                ("stored_bytes", self.stored_bytes),
                ("failure_message", self.failure_message),
                ("asset_deletion_owed_time", self.asset_deletion_owed_time),
            )
            if value is not None
        }
        if self.state is not None:
            columns["state"] = self.state.value
        return columns


@dataclass(frozen=True)
class PageCursor:
    """Where a newest-first listing stands: the last item listed. The next page starts after it."""

    create_time: datetime
    id: str


@dataclass(frozen=True)
class ConversationPage:
    """One page of an owner's conversations, newest first, without their messages."""

    conversations: tuple[Conversation, ...]
    # The last conversation's cursor when more follow; None on the last page.
    next_cursor: PageCursor | None


@dataclass(frozen=True)
class MeditationPage:
    """One page of an owner's meditations, newest first."""

    meditations: tuple[Meditation, ...]
    # The last meditation's cursor when more follow; None on the last page.
    next_cursor: PageCursor | None
