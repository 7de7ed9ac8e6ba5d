"""The media service's work: narrate a script, render a still-image video, store both."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from services import metrics, tracing
from services.media.cleanup import finish_despite_cancellation
from services.media.encoder_process import EncoderProcess
from services.media.encoders import EncoderSelection
from services.media.errors import AssetNotFoundError, EncodingError, InvalidInputError
from services.media.live import LiveNarration, PlaylistPublished, QuickVideo, SpokenSegment
from services.media.live_encoder import LiveEncoder
from services.media.media_links import MediaLinkSigner
from services.media.scratch import ScratchDisk, disk_full_reported
from services.media.speech import Narration
from services.media.urgency import CpuLane
from services.media.video import (
    QUICK_PROFILE,
    RenderProfile,
    StillMuxer,
    VideoEncoded,
    VideoStored,
    copying_sound,
    muxed_here,
    narration_seconds,
    render_still_video,
)
from services.openai_api import ProviderCallError
from services.provider_status import ProviderReport
from services.storage.base import AssetMissingError, AssetStorage, StorageKeyError, new_key, validate_key

logger = logging.getLogger(__name__)

# The folders a meditation's assets are stored in, each under the meditation's id; its WebVTT subtitles are
# kept with the videos.
_ASSET_KINDS = ("narrations", "live", "videos")
# The most assets one SignAssetUris call signs: a page of 100 meditations holds at most 400.
MAX_SIGNED_KEYS = 500


class Narrator(Protocol):
    """Speaks a script with pause marks."""

    async def narrate(self, script: str) -> Narration:
        """Returns the narration; a provider failure raises ProviderCallError."""
        ...


@runtime_checkable
class SentenceBatchNarrator(Protocol):
    """A narrator that speaks several sentences in one request, returning each its own narration."""

    async def narrate_sentences(self, sentences: Sequence[str]) -> list[Narration]:
        """One narration per sentence, in order; a provider failure raises ProviderCallError."""
        ...


class MediaStudio:
    """Owns the narrator, the chosen encoder and storage; one per process."""

    def __init__(
        self,
        *,
        narrator: Narrator,
        narrator_name: str = "espeak-ng",
        fallback_narrator: Narrator | None = None,
        fallback_narrator_name: str = "espeak-ng",
        storage: AssetStorage,
        ffmpeg_path: str,
        encoders: EncoderSelection,
        work_root: Path,
        video_timeout_seconds: float,
        providers: list[ProviderReport] | None = None,
        sentences_in_flight_per_job: int = 3,
        scratch: ScratchDisk | None = None,
        links: MediaLinkSigner | None = None,
        deferrable_renders_at_once: int = 2,
        encoder_process: EncoderProcess | None = None,
    ) -> None:
        self._narrator = narrator
        # Where live narrations are encoded: the encoder process (the service's), or this process's CPU lane.
        self._encoder_process = encoder_process
        # Where still videos are muxed and narrations measured, loops over every packet that PyAV runs taking
        # the interpreter's lock back for each: the encoder process, away from this process's event loop
        # (see encoder_process), or a worker thread here.
        self._still_muxer: StillMuxer = muxed_here if encoder_process is None else encoder_process.mux_still
        self._narration_seconds: Callable[[Path], float] = (
            narration_seconds if encoder_process is None else encoder_process.narration_seconds
        )
        # Local storage's files reach clients through the media endpoint's signed links; None: storage
        # signs its own URLs (Supabase).
        self._links = links
        self._narrator_name = narrator_name
        self._fallback_narrator = fallback_narrator
        self._fallback_narrator_name = fallback_narrator_name
        self.providers = providers or [ProviderReport("speech", "offline")]
        self._sentences_in_flight_per_job = sentences_in_flight_per_job
        self._storage = storage
        self._ffmpeg_path = ffmpeg_path
        self.encoders = encoders
        self._work_root = work_root
        # Without a minimum, a full disk is still recognised when a write fails.
        self.scratch = scratch or ScratchDisk(work_root)
        self._video_timeout_seconds = video_timeout_seconds
        # ENHANCED renders take turns (each holds a decoded full-size picture and a whole narration's audio
        # chain); QUICK ones, a copied track and one frame, never wait.
        self._deferrable_renders = asyncio.Semaphore(deferrable_renders_at_once)
        # Every live narration's mastering and encoding share the cores, in the order of urgency and arrival.
        self._cpu_lane = CpuLane(os.cpu_count() or 1)

    async def speak(self, script: str) -> SpokenSegment:
        """Speaks a script (or one sentence) with the configured narrator, falling back to the offline one
        (Piper, or espeak-ng) when a remote provider fails."""
        return (await self._spoken_or_fallen_back([script], lambda: self._narrator.narrate(script)))[0]

    @property
    def speaks_sentences_together(self) -> bool:
        """Whether the narrator takes several sentences in one request (a remote voice: each request is a
        round trip), so a live narration groups them."""
        return isinstance(self._narrator, SentenceBatchNarrator)

    async def speak_sentences(self, sentences: Sequence[str]) -> list[SpokenSegment]:
        """Speaks sentences in one request when the narrator can (see `speak` otherwise), each sentence with
        its own audio; the offline voice speaks them one by one when the remote provider fails."""
        narrator = self._narrator
        if not isinstance(narrator, SentenceBatchNarrator) or len(sentences) == 1:
            return [await self.speak(sentence) for sentence in sentences]
        return await self._spoken_or_fallen_back(sentences, lambda: narrator.narrate_sentences(sentences))

    async def _spoken_or_fallen_back(
        self, texts: Sequence[str], spoken: Callable[[], Awaitable[Narration | list[Narration]]]
    ) -> list[SpokenSegment]:
        """What `spoken` says for `texts` (one narration, or one per text), or, when the remote provider
        fails, the offline voice speaking each text."""
        try:
            with (
                metrics.provider_call(self._narrator_name, "speech"),
                tracing.provider_call(self._narrator_name, "speech"),
            ):
                narrations = await spoken()
        except ProviderCallError as error:
            if self._fallback_narrator is None:
                raise
            metrics.record_fallback(self._narrator_name, "speech")
            logger.warning(
                "speech provider %s failed, using %s: %s",
                self._narrator_name,
                self._fallback_narrator_name,
                error,
            )
            segments = []
            for text in texts:
                with tracing.provider_call(self._fallback_narrator_name, "speech"):
                    fallback = await self._fallback_narrator.narrate(text)
                segments.append(SpokenSegment(fallback, self._fallback_narrator_name, error.message))
            return segments
        listed = narrations if isinstance(narrations, list) else [narrations]
        return [SpokenSegment(narration, self._narrator_name, "") for narration in listed]

    async def measure_assets(self, meditation_id: str) -> int:
        """How many bytes the meditation's narration, live preview and videos take in storage."""
        return sum([await self._storage.prefix_size(f"{kind}/{meditation_id}") for kind in _ASSET_KINDS])

    async def delete_assets(self, meditation_id: str) -> int:
        """Removes the meditation's narration, live preview and videos; returns how many assets."""
        # At once, not one after another: while storage struggles each waits out its retries, and together
        # they must fit the caller's deadline.
        counts = await asyncio.gather(
            *(self._storage.delete_prefix(f"{kind}/{meditation_id}") for kind in _ASSET_KINDS)
        )
        return sum(counts)

    async def open_live_narration(self, meditation_id: str) -> LiveNarration:
        """A live narration for one job; use it as an async context manager. Refused while the scratch disk
        is under its minimum of free space."""
        await self.scratch.ensure_room()
        return LiveNarration(
            meditation_id=meditation_id,
            speak=self.speak_sentences,
            groups_sentences=self.speaks_sentences_together,
            storage=self._storage,
            work_root=self._work_root,
            max_requests_in_flight=self._sentences_in_flight_per_job,
            cpu_lane=self._cpu_lane,
            open_encoder=LiveEncoder if self._encoder_process is None else self._encoder_process.open,
            make_quick_video=functools.partial(self.make_quick_video, meditation_id),
        )

    async def render(
        self,
        meditation_id: str,
        image_key: str,
        narration_key: str,
        profile: RenderProfile,
        narration_aac_key: str = "",
        subtitles_key: str = "",
    ) -> AsyncIterator[VideoEncoded | VideoStored]:
        """Encodes the video, reports the encode, stores it and reports where it is. Refused before any work
        while the scratch disk is under its minimum of free space; a disk that fills up during the encode
        fails it as ScratchSpaceError, and its scratch files are removed either way."""
        await self.scratch.ensure_room()
        image_path = await self._input_path(image_key, "image_storage_key") if image_key else None
        if not narration_key:
            raise InvalidInputError("narration_storage_key", "is empty: synthesize the narration first")
        audio_path = await self._input_path(narration_key, "narration_storage_key")
        try:
            duration_seconds = await asyncio.to_thread(self._narration_seconds, audio_path)
        except InvalidInputError as error:
            raise InvalidInputError("narration_storage_key", error.problem) from None
        # A narration from NarrateLive is already the meditation's sound, room and bed included
        # (video.live_sound_profile): both profiles copy it, and the video is a picture and a copy rather
        # than a second pass over the whole narration. A WAV narration is mastered by the profile.
        is_audio_copied = bool(narration_aac_key)
        if is_audio_copied:
            audio_path = await self._input_path(narration_aac_key, "narration_aac_storage_key")
            profile = copying_sound(profile)
        subtitles_path = (
            await self._input_path(subtitles_key, "subtitles_storage_key") if subtitles_key else None
        )
        async for event in self._rendered_and_stored(
            meditation_id,
            image_path=image_path,
            audio_path=audio_path,
            duration_seconds=duration_seconds,
            profile=profile,
            is_audio_copied=is_audio_copied,
            subtitles_path=subtitles_path,
        ):
            yield event

    async def make_quick_video(
        self, meditation_id: str, aac_path: Path, subtitles_path: Path, duration_seconds: float
    ) -> QuickVideo:
        """The QUICK video of a live narration that has just ended, from its files on this replica: the
        preview's picture (the placeholder) and the narration's AAC copied, stored beside the narration's
        other assets rather than after them (see live.MakeQuickVideo)."""
        encoded: VideoEncoded | None = None
        stored: VideoStored | None = None
        # Read to its end, so the render's scratch folder is gone when this returns.
        with tracing.TRACER.start_as_current_span("media.quick_video"):
            async for event in self._rendered_and_stored(
                meditation_id,
                image_path=None,
                audio_path=aac_path,
                duration_seconds=duration_seconds,
                profile=copying_sound(QUICK_PROFILE),
                is_audio_copied=True,
                subtitles_path=subtitles_path,
            ):
                if isinstance(event, VideoEncoded):
                    encoded = event
                else:
                    stored = event
        if encoded is None or stored is None:
            raise EncodingError("the QUICK video was not stored")
        return QuickVideo(encoded, stored)

    async def _rendered_and_stored(
        self,
        meditation_id: str,
        *,
        image_path: Path | None,
        audio_path: Path,
        duration_seconds: float,
        profile: RenderProfile,
        is_audio_copied: bool,
        subtitles_path: Path | None,
    ) -> AsyncIterator[VideoEncoded | VideoStored]:
        """Encodes the video, reports the encode, stores it and reports where it is; its scratch files are
        removed either way."""
        with disk_full_reported():
            work_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="render-", dir=self._work_root))
        try:
            # The placeholder image or the finished file's check may find the scratch disk full.
            async with self._deferrable_renders if profile.is_deferrable else contextlib.nullcontext():
                started = time.perf_counter()
                with disk_full_reported():
                    video = await render_still_video(
                        ffmpeg_path=self._ffmpeg_path,
                        image_path=image_path,
                        audio_path=audio_path,
                        duration_seconds=duration_seconds,
                        output_path=work_dir / f"{profile.name}.mp4",
                        profile=profile,
                        encoder=self.encoders.selected,
                        timeout_seconds=self._video_timeout_seconds,
                        is_audio_copied=is_audio_copied,
                        subtitles_path=subtitles_path,
                        still_muxer=self._still_muxer,
                    )
            encode_seconds = time.perf_counter() - started
            metrics.record_encode(video.encoder, profile.name, encode_seconds, video.duration_seconds)
            yield VideoEncoded(encode_seconds=encode_seconds, encoder=video.encoder)
            started = time.perf_counter()
            stored = await self._storage.put_file(
                new_key(f"videos/{meditation_id}", f"{profile.name}.mp4"),
                video.path,
                "video/mp4",
                # The gateway signs each reader's URI when it hands the video out.
                signed=False,
            )
            yield VideoStored(
                storage_key=stored.key,
                duration_seconds=video.duration_seconds,
                size_bytes=stored.size_bytes,
                width_pixels=video.width_pixels,
                height_pixels=video.height_pixels,
                encoder=video.encoder,
                upload_seconds=time.perf_counter() - started,
            )
        finally:
            # A cancellation landing here (a cut stream, a shutdown) must not leave the files.
            await finish_despite_cancellation(asyncio.to_thread(shutil.rmtree, work_dir, True))

    def live_playlist_uri(self, published: PlaylistPublished, owner: str) -> str:
        """The URI `owner` can play a live playlist from, as asset_uris would make it, with no request:
        storage signed the playlist as it published it. Empty for no owner (the gateway then signs it)."""
        if not owner:
            return ""
        if self._links is None:
            return published.signed_uri
        return self._links.link(published.storage_key, owner)

    async def asset_uris(self, keys: Sequence[str], owner: str) -> list[str]:
        """URIs `owner` can fetch the assets from now, signed and short-lived, in order; an empty one for a
        key with no asset. The caller (the gateway) has checked that the assets are `owner`'s."""
        if not owner:
            raise InvalidInputError("owner", "is required: the owner the links are made for")
        if len(keys) > MAX_SIGNED_KEYS:
            raise InvalidInputError(
                "storage_keys", f"lists {len(keys)} keys: ask for at most {MAX_SIGNED_KEYS}"
            )
        for index, key in enumerate(keys):
            try:
                validate_key(key)
            except StorageKeyError:
                raise InvalidInputError(
                    f"storage_keys[{index}]", f"{key!r} is not a storage key this system made"
                ) from None
        stored = await self._storage.signed_uris(keys)
        if self._links is None:
            return stored
        # Storage's answer says which assets still exist; the endpoint's link is what a client can reach.
        return [self._links.link(key, owner) if uri else "" for key, uri in zip(keys, stored, strict=True)]

    async def _input_path(self, key: str, field: str) -> Path:
        try:
            validate_key(key)
            return await self._storage.local_path(key)
        except StorageKeyError:
            raise InvalidInputError(field, f"{key!r} is not a storage key this system made") from None
        except AssetMissingError:
            raise AssetNotFoundError(key) from None
