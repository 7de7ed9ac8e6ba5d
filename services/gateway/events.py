"""The events of a meditation job, and how they are stored in its event log."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from services.gateway.errors import FailureKind
from services.gateway.models import MeditationState


class Stage(enum.StrEnum):
    """The pipeline's stages, in the order they run."""

    SOURCE = "source"
    TRANSCRIPT = "transcript"
    IMAGE = "image"
    NARRATION = "narration"
    QUICK_VIDEO = "quick_video"
    ENHANCED_VIDEO = "enhanced_video"
    UPLOAD = "upload"


class StageState(enum.StrEnum):
    """A stage's lifecycle."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


class SpokenOutcome(enum.StrEnum):
    """What kind of script the listener hears."""

    UNSPECIFIED = "unspecified"  # the job ended before its script was written
    ORDINARY = "ordinary"
    # The conversation, or the script written from it, signals a risk of suicide or self-harm: a short
    # grounding script that names no method and points to help.
    CRISIS_GROUNDING = "crisis_grounding"


class VideoQuality(enum.StrEnum):
    """Which of a job's two videos."""

    QUICK = "quick"
    ENHANCED = "enhanced"


@dataclass(frozen=True)
class Accepted:
    """The job exists; always the first event."""

    meditation: str
    conversation: str


@dataclass(frozen=True)
class StageChanged:
    """A stage started, finished, failed or was skipped."""

    stage: Stage
    state: StageState
    stage_elapsed_seconds: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class TranscriptReady:
    """The script is written."""

    text: str
    word_count: int
    is_cached: bool
    provider: str = ""
    fallback_reason: str = ""
    spoken_outcome: SpokenOutcome = SpokenOutcome.ORDINARY


@dataclass(frozen=True)
class ImageReady:
    """The generated image is stored."""

    storage_key: str
    width_pixels: int
    height_pixels: int
    is_cached: bool
    provider: str = ""
    fallback_reason: str = ""
    # Made for the reader when the event is read (see asset_links), never stored.
    uri: str = ""


@dataclass(frozen=True)
class SentenceTiming:
    """One sentence's place in the narration."""

    text: str
    start_seconds: float
    end_seconds: float


@dataclass(frozen=True)
class PlaylistReady:
    """The live preview can be played: an HLS playlist that grows as the narration is spoken."""

    storage_key: str
    # Made for the reader when the event is read (see asset_links), never stored.
    uri: str = ""


@dataclass(frozen=True)
class NarrationReady:
    """The narration is stored."""

    storage_key: str
    duration_seconds: float
    provider: str = ""
    fallback_reason: str = ""
    sentences: tuple[SentenceTiming, ...] = ()
    # Made for the reader when the event is read (see asset_links), never stored.
    uri: str = ""
    # The WebVTT subtitles, stored and linked like the narration; empty in events logged before subtitles.
    subtitles_storage_key: str = ""
    subtitles_uri: str = ""


@dataclass(frozen=True)
class VideoReady:
    """A video is stored."""

    quality: VideoQuality
    storage_key: str
    duration_seconds: float
    size_bytes: int
    width_pixels: int
    height_pixels: int
    encoder: str
    # Made for the reader when the event is read (see asset_links), never stored.
    uri: str = ""
    # The WebVTT subtitles the MP4 also carries, stored and linked like the video.
    subtitles_storage_key: str = ""
    subtitles_uri: str = ""


@dataclass(frozen=True)
class AttemptFailed:
    """An attempt failed in a way another may not; the job is attempted again after `retry_delay_seconds`."""

    attempt: int
    max_attempts: int
    reason: str
    retry_delay_seconds: float = 0.0


@dataclass(frozen=True)
class Completed:
    """The job ended; always the last event. A failure keeps its kind: a replay ends with the same status."""

    state: MeditationState
    stage_seconds: dict[str, float] = field(default_factory=dict)
    transcript_cache_hit: bool = False
    image_cache_hit: bool = False
    total_seconds: float = 0.0
    failure_kind: FailureKind | None = None
    failure_message: str = ""
    spoken_outcome: SpokenOutcome = SpokenOutcome.UNSPECIFIED
    # Why the outcome is not ordinary; never quotes the conversation.
    outcome_reason: str = ""
    # Sentences of the narration the speech provider read other than written.
    misread_sentence_count: int = 0


Event = (
    Accepted
    | StageChanged
    | TranscriptReady
    | ImageReady
    | PlaylistReady
    | NarrationReady
    | VideoReady
    | AttemptFailed
    | Completed
)

_KINDS: dict[str, type[Event]] = {
    "accepted": Accepted,
    "stage": StageChanged,
    "transcript_ready": TranscriptReady,
    "image_ready": ImageReady,
    "playlist_ready": PlaylistReady,
    "narration_ready": NarrationReady,
    "video_ready": VideoReady,
    "attempt_failed": AttemptFailed,
    "completed": Completed,
}
_KIND_OF = {event_type: kind for kind, event_type in _KINDS.items()}
# The events that name a stored asset: stored with its key, read with a URI made for the reader.
AssetEvent = ImageReady | PlaylistReady | NarrationReady | VideoReady
_ASSET_EVENTS: tuple[type[AssetEvent], ...] = (ImageReady, PlaylistReady, NarrationReady, VideoReady)
# The asset events that also name the narration's WebVTT subtitles, stored and read the same way.
SubtitledEvent = NarrationReady | VideoReady
# Fields whose stored text must be turned back into an enum on the way in.
_ENUM_FIELDS: dict[str, type[enum.Enum]] = {
    "stage": Stage,
    "state": StageState,
    "quality": VideoQuality,
    "failure_kind": FailureKind,
    "spoken_outcome": SpokenOutcome,
}


@dataclass(frozen=True)
class SequencedEvent:
    """An event with its place in the job's log and its time."""

    sequence: int
    event_time: datetime
    elapsed_seconds: float
    event: Event


def without_uris(event: Event) -> Event:
    """The event as the log keeps it: a URI its live readers were handed with it (made for its owner as it
    happened, as media makes the live playlist's) is dropped; it is made again whenever the event is read."""
    if isinstance(event, SubtitledEvent) and event.subtitles_uri:
        event = replace(event, subtitles_uri="")
    if isinstance(event, _ASSET_EVENTS) and event.uri:
        event = replace(event, uri="")
    return event


def encode_event(elapsed_seconds: float, event: Event) -> bytes:
    """The event as stored in the log: JSON, tagged with its kind. An asset is stored by its key alone: a URI
    is made for each reader (signed, short-lived), so none is ever stored."""
    if (isinstance(event, AssetEvent) and event.uri) or (
        isinstance(event, SubtitledEvent) and event.subtitles_uri
    ):
        raise ValueError("an asset's URI is made when the event is read; store its storage key only")
    fields = asdict(event)
    fields.pop("uri", None)
    fields.pop("subtitles_uri", None)
    body = {"kind": _KIND_OF[type(event)], "elapsed_seconds": elapsed_seconds, "event": fields}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_event(sequence: int, event_time: datetime, payload: bytes) -> SequencedEvent:
    """Reads one stored event back."""
    body = json.loads(payload)
    event_type = _KINDS[body["kind"]]
    values: dict[str, Any] = dict(body["event"])
    if event_type in _ASSET_EVENTS and "storage_key" not in values:
        # Logged before URIs were made on read: the stored URI stands in for the key (asset_links passes a
        # value with a scheme through as it is).
        values["storage_key"] = values.pop("uri", "")
    for name, value in values.items():
        if value is None:
            continue
        if event_type is Completed and name == "state":
            values[name] = MeditationState(value)
        elif name == "sentences":
            values[name] = tuple(SentenceTiming(**sentence) for sentence in value)
        elif name in _ENUM_FIELDS:
            values[name] = _ENUM_FIELDS[name](value)
    return SequencedEvent(
        sequence=sequence,
        event_time=event_time,
        elapsed_seconds=float(body["elapsed_seconds"]),
        event=event_type(**values),
    )
