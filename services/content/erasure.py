"""What is made from a conversation, recorded as it is made, and erased with the conversation.

A conversation's text reaches places outside its rows: the transcripts cache (keyed by a hash of the source
text, so the same text finds the same script) and the images cache with the image files it points at. Each
is recorded against the conversation when it is made or served (`conversation_artifacts`), and
`ConversationErasure.delete` erases what was recorded. An image file another conversation also uses stays
(it is that conversation's too); its cache entry holds only a storage key.

Ordering keeps erasure whole when it races a job still writing: a record needs the conversation's row
(locked), so after the deletion commits no artifact can be recorded against it, and whatever is made then is
erased by its maker on the spot.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.content.errors import NotFoundError
from services.content.generation import (
    GeneratedImage,
    ImageGenerator,
    TranscriptEvent,
    TranscriptGenerator,
    TranscriptResult,
)
from services.content.repository import Artifact, ContentRepository

logger = logging.getLogger(__name__)

TRANSCRIPT = "transcript"
IMAGE = "image"


@dataclass(frozen=True)
class Erasure:
    """What deleting a conversation erased."""

    message_count: int
    cache_entry_count: int
    asset_count: int


class ConversationErasure:
    """Records what is made from a conversation, and erases it with the conversation."""

    def __init__(
        self, repository: ContentRepository, transcripts: TranscriptGenerator, images: ImageGenerator
    ) -> None:
        self._repository = repository
        self._transcripts = transcripts
        self._images = images

    async def transcript(
        self, owner: str, conversation_id: str, events: AsyncIterator[TranscriptEvent]
    ) -> AsyncIterator[TranscriptEvent]:
        """Passes on the events of a transcript written from `owner`'s conversation, recording its cache entry
        before the script is handed out. NotFoundError before anything is written when the conversation is
        not theirs, and instead of the script when it was deleted meanwhile (the entry is then erased)."""
        await self._repository.check_owner(owner, conversation_id)
        async for event in events:
            if isinstance(event, TranscriptResult) and event.cache_key:
                await self._record(owner, conversation_id, Artifact(TRANSCRIPT, event.cache_key))
            yield event

    async def image(self, owner: str, conversation_id: str, image: GeneratedImage) -> GeneratedImage:
        """Records an image made for `owner`'s conversation before it is handed out; NotFoundError when the
        conversation was deleted meanwhile (the image is then erased, unless another conversation uses it)."""
        await self._record(owner, conversation_id, Artifact(IMAGE, image.cache_key, image.storage_key))
        return image

    async def check_owner(self, owner: str, conversation_id: str) -> None:
        """NotFoundError unless `owner`'s conversation exists: checked before making anything for it."""
        await self._repository.check_owner(owner, conversation_id)

    async def delete(self, owner: str, conversation_id: str) -> Erasure:
        """Erases `owner`'s conversation: every recorded cache entry and image file no other conversation
        uses, then its rows. Anyone else's conversation is NotFoundError, exactly as a missing one is.

        Artifacts go before the rows, so a deletion that fails half-way (the cache or storage unreachable)
        leaves the conversation in place and a retry finishes it. Whatever was recorded in between (a job
        still writing) is erased after the rows are gone; after that nothing more can be recorded."""
        erased: set[str] = set()
        cache_entry_count = asset_count = 0

        async def erase(artifacts: tuple[Artifact, ...], shared: frozenset[str]) -> None:
            nonlocal cache_entry_count, asset_count
            for artifact in artifacts:
                if artifact.cache_key in erased:
                    continue
                cache_entry_count += await self._erase(artifact, shared)
                asset_count += bool(artifact.storage_key and artifact.storage_key not in shared)
                erased.add(artifact.cache_key)

        recorded = await self._repository.list_artifacts(owner, conversation_id)
        await erase(recorded, await self._repository.shared_storage_keys(recorded, conversation_id))
        deleted = await self._repository.delete_conversation(owner, conversation_id)
        await erase(deleted.artifacts, deleted.shared_storage_keys)
        return Erasure(deleted.message_count, cache_entry_count, asset_count)

    async def _record(self, owner: str, conversation_id: str, artifact: Artifact) -> None:
        try:
            await self._repository.record_artifact(owner, conversation_id, artifact)
        except NotFoundError:
            # Deleted while this was being made: it must not outlive the conversation.
            await self._erase(artifact, await self._repository.shared_storage_keys((artifact,)))
            raise

    async def _erase(self, artifact: Artifact, shared_storage_keys: frozenset[str]) -> int:
        """Forgets the entry and deletes its file unless shared; returns how many cache entries it forgot."""
        if artifact.storage_key and artifact.storage_key in shared_storage_keys:
            return 0  # another conversation's image too: its entry and file stay
        try:
            if artifact.storage_key:
                is_forgotten = await self._images.erase(artifact.cache_key, artifact.storage_key)
            else:
                is_forgotten = await self._transcripts.forget(artifact.cache_key)
        except Exception:
            # The key is a hash: it names the entry without holding anything of the conversation.
            logger.error("erasing a %s (cache key %s) failed", artifact.kind, artifact.cache_key)
            raise
        return int(is_forgotten)
