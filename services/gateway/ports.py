"""What the gateway needs from the content and media services, as plain Python interfaces."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.gateway.events import SentenceTiming, SpokenOutcome, VideoQuality
from services.gateway.models import Conversation, ConversationPage, Message, PageCursor


@dataclass(frozen=True)
class ConversationRef:
    """A conversation and its owner: what a transcript or image is made from."""

    owner: str
    name: str


@dataclass(frozen=True)
class SourceContent:
    """The conversation text a meditation is written from."""

    text: str
    themes: tuple[str, ...]
    # The whole conversation (not only `text`, a cut of it) signals a risk of suicide or self-harm.
    is_crisis_signalled: bool = False
    # The conversation it was cut from: what is made from it is recorded against it, to be erased with it.
    origin: ConversationRef | None = None


@dataclass(frozen=True)
class TranscriptPiece:
    """More script text as the writer produces it."""

    text: str


@dataclass(frozen=True)
class WrittenTranscript:
    """The whole script."""

    text: str
    word_count: int
    is_cached: bool
    provider: str
    fallback_reason: str = ""
    spoken_outcome: SpokenOutcome = SpokenOutcome.ORDINARY
    outcome_reason: str = ""


@dataclass(frozen=True)
class GeneratedImage:
    """An image in asset storage."""

    storage_key: str
    width_pixels: int
    height_pixels: int
    is_cached: bool
    provider: str
    fallback_reason: str = ""


@dataclass(frozen=True)
class TranscriptRestart:
    """The text streamed so far is void: the provider failed, and the fallback writes the script afresh."""

    reason: str


@dataclass(frozen=True)
class LivePlaylist:
    """The live preview of a narration can be played."""

    storage_key: str
    # Its URI, made by media for the meditation's owner as it was published; empty when media made none.
    owner_uri: str = ""


@dataclass(frozen=True)
class SpokenNarration:
    """A narration in asset storage."""

    storage_key: str
    duration_seconds: float
    provider: str
    fallback_reason: str = ""
    # The same narration as AAC, for a QUICK video that copies rather than encodes it.
    aac_storage_key: str = ""
    sentences: tuple[SentenceTiming, ...] = ()
    # The sentences as WebVTT subtitles, for the videos to carry and for clients' <track>.
    subtitles_storage_key: str = ""
    # Sentences the speech provider read other than written.
    misread_sentence_count: int = 0
    # What the narration's assets take in storage (its AAC, subtitles and live preview); 0 when media did
    # not say.
    stored_bytes: int = 0
    # The QUICK video, made by media as the narration ended; None when it was not (then it is rendered).
    quick_video: MadeVideo | None = None


@dataclass(frozen=True)
class EncodedVideo:
    """A finished encode, before upload."""

    encode_seconds: float
    encoder: str


@dataclass(frozen=True)
class StoredVideo:
    """A video in asset storage."""

    storage_key: str
    duration_seconds: float
    size_bytes: int
    width_pixels: int
    height_pixels: int
    encoder: str
    upload_seconds: float


@dataclass(frozen=True)
class MadeVideo:
    """A video encoded and stored by another step (media makes the QUICK one as a narration ends)."""

    encoded: EncodedVideo
    stored: StoredVideo


class ContentPort(Protocol):
    """The content service: conversations (each seen only by its owner), transcripts and images."""

    async def create_conversation(
        self, owner: str, title: str, messages: Sequence[Message], request_id: str
    ) -> Conversation: ...

    async def append_messages(self, owner: str, conversation: str, messages: Sequence[Message]) -> int: ...

    async def get_conversation(self, owner: str, name: str) -> Conversation: ...

    async def list_conversations(
        self, owner: str, page_size: int, after: PageCursor | None
    ) -> ConversationPage: ...

    async def collect_source_content(self, owner: str, conversation: str) -> SourceContent: ...

    def generate_transcript(
        self,
        source_text: str,
        *,
        skip_cache: bool,
        is_crisis_signalled: bool = False,
        made_for: ConversationRef | None = None,
    ) -> AsyncIterator[TranscriptPiece | TranscriptRestart | WrittenTranscript]:
        """Writes the script; `made_for` records it as made from that conversation, so that deleting the
        conversation erases it (and refuses it once the conversation is gone)."""
        ...

    async def create_image_prompt(self, source_text: str) -> str: ...

    async def generate_image(
        self,
        prompt: str,
        width_pixels: int,
        height_pixels: int,
        *,
        skip_cache: bool,
        made_for: ConversationRef | None = None,
    ) -> GeneratedImage:
        """Makes or finds the image; `made_for` as for generate_transcript."""
        ...

    async def delete_conversation(self, owner: str, name: str) -> None:
        """Erases `owner`'s conversation and what content made from it; NOT_FOUND when it is not theirs."""
        ...


class MediaPort(Protocol):
    """The media service: narration and video rendering."""

    def narrate_live(
        self, meditation: str, owner: str, script: AsyncIterator[str]
    ) -> AsyncGenerator[LivePlaylist | SpokenNarration, None]:
        """Speaks the script while it arrives, each text of `script` one or more whole sentences (as the
        content service writes them): LivePlaylist once playable (with its URI for `owner`), then the
        narration, last."""
        ...

    async def delete_meditation_assets(self, meditation: str) -> int: ...

    async def measure_meditation_assets(self, meditation: str) -> int:
        """How many bytes the meditation's narration, live preview and videos take in storage."""
        ...

    async def asset_uris(self, storage_keys: Sequence[str], owner: str) -> list[str]:
        """The URIs `owner` fetches the assets from, made now (signed, for a while), in order; an empty one
        for an asset that is gone. The caller has checked the assets are `owner`'s."""
        ...

    def render_video(
        self, meditation: str, image_storage_key: str, narration: SpokenNarration, quality: VideoQuality
    ) -> AsyncGenerator[EncodedVideo | StoredVideo, None]: ...
