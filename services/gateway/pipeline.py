"""The story of one meditation job, step by step: source, transcript ∥ image, narration, QUICK, ENHANCED."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from opentelemetry.trace import Span, StatusCode

from services import metrics, tracing
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.events import (
    Event,
    ImageReady,
    NarrationReady,
    PlaylistReady,
    SpokenOutcome,
    Stage,
    StageChanged,
    StageState,
    TranscriptReady,
    VideoQuality,
    VideoReady,
)
from services.gateway.models import JobChanges, Meditation
from services.gateway.ports import (
    ContentPort,
    EncodedVideo,
    GeneratedImage,
    LivePlaylist,
    MadeVideo,
    MediaPort,
    SourceContent,
    SpokenNarration,
    StoredVideo,
    TranscriptPiece,
    TranscriptRestart,
    WrittenTranscript,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


class JobEvents(Protocol):
    """Where the pipeline reports what happens; the job recorder implements it."""

    meditation: str
    transcript_cache_hit: bool
    spoken_outcome: SpokenOutcome
    outcome_reason: str
    image_cache_hit: bool
    misread_sentence_count: int
    # Whether an earlier attempt ran (and may have left assets in storage).
    is_resumed: bool

    async def emit(self, event: Event, changes: JobChanges | None = None) -> None:
        """Records and publishes one event."""
        ...

    def emit_soon(self, event: Event, changes: JobChanges | None = None) -> asyncio.Future[None]:
        """Starts recording one event, in order with those emitted after it; await the result to know it
        was recorded."""
        ...

    def add_stage_time(self, stage: Stage, seconds: float) -> None:
        """Adds to a stage's total time."""
        ...


@dataclass(frozen=True)
class StageTimeouts:
    """How long each stage may take before the job fails with DEADLINE_EXCEEDED (the budgets of the
    reference pipeline, the system Stillpoint replaces)."""

    source_seconds: float = 10.0
    transcript_seconds: float = 300.0
    image_seconds: float = 300.0
    narration_seconds: float = 60.0
    video_seconds: float = 120.0


class _StageRun:
    """A stage in progress; `detail` is reported when it succeeds, and `provider` (what did the work: a
    provider's name, an encoder) labels its duration in the metrics."""

    def __init__(self, already_elapsed_seconds: float = 0.0) -> None:
        self.detail = ""
        self.provider = ""
        # A stage run elsewhere and reported when done began that long ago.
        self.started_at = time.monotonic() - already_elapsed_seconds
        # The start's and the end's writes, when the stage ended with them still going
        # (MeditationPipeline._stage, ends_soon).
        self.written: asyncio.Future[Any] | None = None

    def measure(self, stage: Stage, outcome: StageState) -> None:
        """Records the stage's duration in stillpoint_stage_duration_seconds."""
        metrics.STAGE_DURATION_SECONDS.labels(
            stage=stage.value, provider=self.provider or "none", outcome=outcome.value
        ).observe(self.elapsed_seconds)

    @property
    def elapsed_seconds(self) -> float:
        return time.monotonic() - self.started_at


class MeditationPipeline:
    """Runs one job through the content and media services, reporting every step."""

    def __init__(self, content: ContentPort, media: MediaPort, timeouts: StageTimeouts) -> None:
        self._content = content
        self._media = media
        self._timeouts = timeouts

    async def run(self, job: JobEvents, meditation: Meditation) -> None:
        """Produces both videos; raises GatewayError when a stage fails."""
        # `accepted` was recorded when the job was queued. A resumed job (its gateway stopped, or an attempt
        # failed) runs again from the start; caches make the repeated transcript and image free, and its log
        # simply continues.
        # Media's narration stream is opened now, beside the source stage, not when the first sentence is
        # ready: with fifty people arriving together a new call waited seconds for media to take it (gRPC's
        # asyncio server takes one new call at a time), and every second of it delayed the first sound.
        script = _LiveScript()
        opened = _Started(self._media.narrate_live(job.meditation, meditation.owner, script.texts()))
        try:
            await self._run_opened(job, meditation, script, opened)
        finally:
            await opened.aclose()

    async def _run_opened(
        self,
        job: JobEvents,
        meditation: Meditation,
        script: _LiveScript,
        opened: _Started[LivePlaylist | SpokenNarration],
    ) -> None:
        options = meditation.options
        # The source's start and end are written beside the transcript's and the image's first calls, which
        # wait for nothing else: with fifty jobs at once, waiting for them was a database round trip or two
        # (0.05-1.2 s, queued on the gateway's event loop) between the source and the first token. The
        # transcript stage fails with them, should either fail (_stage's `after`).
        async with self._stage(job, Stage.SOURCE, self._timeouts.source_seconds, ends_soon=True) as stage:
            source = await self._content.collect_source_content(meditation.owner, meditation.conversation)
            stage.detail = f"{len(source.text)} characters; themes: {', '.join(source.themes[:3]) or 'none'}"
        source_ended = stage.written
        assert source_ended is not None
        # The image is the slowest call: start it now, and let the transcript and narration run beside it.
        image_task = asyncio.create_task(
            self._image(job, source, options.image_aspect.size_pixels, options.skip_cache)
        )
        try:
            narration = await self._transcript_and_narration(
                job, source, meditation.owner, options.skip_cache, script, opened, source_ended
            )
            made_quick = narration.quick_video
            if made_quick is not None:
                # Media made it as the narration ended, with the preview's picture.
                quick_bytes = await self._quick_video_made(job, made_quick, narration)
            else:
                early_image = _result_if_ready(image_task)
                quick_bytes = await self._video(job, VideoQuality.QUICK, early_image, narration)
            image = await image_task
            await self._video(job, VideoQuality.ENHANCED, image, narration, quick_bytes)
        finally:
            if not image_task.done():
                image_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, GatewayError):
                    await image_task
            elif not image_task.cancelled():
                # It failed while another stage failed the attempt first: that failure is the one reported,
                # and reading this one keeps asyncio from logging it as never retrieved.
                image_task.exception()

    async def _transcript_and_narration(
        self,
        job: JobEvents,
        source: SourceContent,
        owner: str,
        skip_cache: bool,
        script: _LiveScript,
        opened: _Started[LivePlaylist | SpokenNarration],
        source_ended: asyncio.Future[Any],
    ) -> SpokenNarration:
        """Writes the transcript and speaks it at the same time: each sentence goes to the narrator (on the
        stream `opened` for `script`) as soon as the writer finishes it, so the live preview plays while the
        transcript is still being written. `source_ended`: the source stage's writes, still going."""
        narrating = asyncio.create_task(self._narration(job, opened))

        def restart() -> None:
            # The writer failed over to its fallback: what was spoken is void, so speak the new script.
            nonlocal script, narrating
            narrating.cancel()
            script = _LiveScript()
            narrating = asyncio.create_task(
                self._narration(job, self._media.narrate_live(job.meditation, owner, script.texts()))
            )

        try:
            # Lambdas, not `script.add` and `script.end`: `restart` replaces `script`, and the rest of the
            # transcript goes to the new one.
            await self._transcript(
                job,
                source,
                skip_cache,
                lambda text: script.add(text),
                restart,
                lambda: script.end(),
                after=source_ended,
            )
            return await narrating
        finally:
            if not narrating.done():
                narrating.cancel()
                with contextlib.suppress(asyncio.CancelledError, GatewayError):
                    await narrating

    async def _transcript(
        self,
        job: JobEvents,
        source: SourceContent,
        skip_cache: bool,
        on_text: Callable[[str], None],
        on_restart: Callable[[], None],
        on_complete: Callable[[], None],
        *,
        after: asyncio.Future[Any],
    ) -> WrittenTranscript:
        async with self._stage(
            job, Stage.TRANSCRIPT, self._timeouts.transcript_seconds, after=after
        ) as stage:
            written: WrittenTranscript | None = None
            pieces = self._content.generate_transcript(
                source.text,
                skip_cache=skip_cache,
                is_crisis_signalled=source.is_crisis_signalled,
                made_for=source.origin,
            )
            async for piece in pieces:
                if isinstance(piece, TranscriptPiece):
                    on_text(piece.text)
                elif isinstance(piece, TranscriptRestart):
                    on_restart()
                elif piece.is_cached:
                    # A cached script arrives whole, with no pieces before it.
                    on_text(piece.text)
                    written = piece
                else:
                    written = piece
            if written is None:
                raise GatewayError(FailureKind.INTERNAL, "the transcript stream ended without a transcript")
            # The narrator hears that the script is complete before the stage's end and the transcript are
            # recorded: until then it holds the last sentences for a fuller speech request, and the QUICK
            # video waits for them (each record is a database round trip, queued behind every other job's on
            # a busy gateway).
            on_complete()
            stage.detail = _provider_detail(
                f"{written.word_count} words", written.provider, written.is_cached, written.fallback_reason
            )
            stage.provider = written.provider
        job.transcript_cache_hit = written.is_cached
        # A crisis grounding script is flagged in the stream, so the calling app can act on it.
        job.spoken_outcome, job.outcome_reason = written.spoken_outcome, written.outcome_reason
        await job.emit(
            TranscriptReady(
                text=written.text,
                word_count=written.word_count,
                is_cached=written.is_cached,
                provider=written.provider,
                fallback_reason=written.fallback_reason,
                spoken_outcome=written.spoken_outcome,
            ),
            JobChanges(transcript=written.text),
        )
        return written

    async def _image(
        self, job: JobEvents, source: SourceContent, size_pixels: tuple[int, int], skip_cache: bool
    ) -> GeneratedImage:
        async with self._stage(job, Stage.IMAGE, self._timeouts.image_seconds) as stage:
            prompt = await self._content.create_image_prompt(source.text)
            width, height = size_pixels
            image = await self._content.generate_image(
                prompt, width, height, skip_cache=skip_cache, made_for=source.origin
            )
            stage.detail = _provider_detail(
                f"{image.width_pixels}x{image.height_pixels}",
                image.provider,
                image.is_cached,
                image.fallback_reason,
            )
            stage.provider = image.provider
        job.image_cache_hit = image.is_cached
        await job.emit(
            ImageReady(
                storage_key=image.storage_key,
                width_pixels=image.width_pixels,
                height_pixels=image.height_pixels,
                is_cached=image.is_cached,
                provider=image.provider,
                fallback_reason=image.fallback_reason,
            ),
            JobChanges(image_storage_key=image.storage_key),
        )
        return image

    async def _narration(
        self, job: JobEvents, events: AsyncIterable[LivePlaylist | SpokenNarration]
    ) -> SpokenNarration:
        # It runs alongside the transcript, so its budget is the transcript's plus its own.
        timeout_seconds = self._timeouts.transcript_seconds + self._timeouts.narration_seconds
        async with self._stage(job, Stage.NARRATION, timeout_seconds) as stage:
            narration = await self._narrate_once(job, events)
            misread = narration.misread_sentence_count
            stage.detail = _provider_detail(
                f"{narration.duration_seconds:.1f} s, {len(narration.sentences)} sentences"
                + (f" ({misread} read differently)" if misread else ""),
                narration.provider,
                False,
                narration.fallback_reason,
            )
            stage.provider = narration.provider
        job.misread_sentence_count = narration.misread_sentence_count
        await job.emit(
            NarrationReady(
                storage_key=narration.storage_key,
                duration_seconds=narration.duration_seconds,
                provider=narration.provider,
                fallback_reason=narration.fallback_reason,
                sentences=narration.sentences,
                subtitles_storage_key=narration.subtitles_storage_key,
            ),
            JobChanges(narration_storage_key=narration.storage_key),
        )
        return narration

    async def _narrate_once(
        self, job: JobEvents, events: AsyncIterable[LivePlaylist | SpokenNarration]
    ) -> SpokenNarration:
        narration: SpokenNarration | None = None
        async for event in events:
            if isinstance(event, LivePlaylist):
                # With the URI media made for the owner as it published: the event's live readers (only its
                # owner may read it) get it with no signing call; the log keeps the key alone.
                await job.emit(PlaylistReady(storage_key=event.storage_key, uri=event.owner_uri))
            else:
                narration = event
        if narration is None:
            raise GatewayError(FailureKind.INTERNAL, "the narration stream ended without a narration")
        return narration

    async def _video(
        self,
        job: JobEvents,
        quality: VideoQuality,
        image: GeneratedImage | None,
        narration: SpokenNarration,
        quick_bytes: int = 0,
    ) -> int:
        """Renders and stores one video and reports it; returns its size. The ENHANCED video is the job's
        last asset: what they all take is recorded with it (`quick_bytes`, the QUICK video's size)."""
        stage_name = Stage.QUICK_VIDEO if quality is VideoQuality.QUICK else Stage.ENHANCED_VIDEO
        renders = self._media.render_video(
            job.meditation, image.storage_key if image else "", narration, quality
        )
        async with contextlib.aclosing(renders):
            async with self._stage(job, stage_name, self._timeouts.video_seconds) as stage:
                encoded = await anext(renders)
                if not isinstance(encoded, EncodedVideo):
                    raise GatewayError(FailureKind.INTERNAL, "the media service skipped the encode report")
                source = "the generated image" if image else "a placeholder (the image was not ready)"
                stage.detail = f"from {source}; encoder {encoded.encoder}"
                stage.provider = encoded.encoder
            async with self._stage(job, Stage.UPLOAD, self._timeouts.video_seconds) as upload:
                stored = await anext(renders)
                if isinstance(stored, EncodedVideo):
                    raise GatewayError(FailureKind.INTERNAL, "the media service reported no upload")
                upload.detail = f"{quality.value} video, {stored.size_bytes} bytes"
        return await self._video_ready(job, quality, stored, narration, quick_bytes)

    async def _quick_video_made(self, job: JobEvents, made: MadeVideo, narration: SpokenNarration) -> int:
        """Reports the QUICK video media made and stored as the narration ended, as `_video` reports one it
        asks for: its encode and upload stages, with the times media measured, then the video."""
        encoded, stored = made.encoded, made.stored
        await self._stage_done_elsewhere(
            job,
            Stage.QUICK_VIDEO,
            encoded.encode_seconds,
            f"from a placeholder (the preview's picture); encoder {encoded.encoder}",
            encoded.encoder,
        )
        await self._stage_done_elsewhere(
            job,
            Stage.UPLOAD,
            stored.upload_seconds,
            f"{VideoQuality.QUICK.value} video, {stored.size_bytes} bytes",
            encoded.encoder,
        )
        return await self._video_ready(job, VideoQuality.QUICK, stored, narration)

    async def _video_ready(
        self,
        job: JobEvents,
        quality: VideoQuality,
        stored: StoredVideo,
        narration: SpokenNarration,
        quick_bytes: int = 0,
    ) -> int:
        """Records and reports a stored video; returns its size."""
        changes = (
            JobChanges(quick_video_storage_key=stored.storage_key)
            if quality is VideoQuality.QUICK
            # Its last asset is stored: what they all take now counts against the owner's storage limit.
            else JobChanges(
                enhanced_video_storage_key=stored.storage_key,
                stored_bytes=await self._stored_bytes(job, narration, quick_bytes + stored.size_bytes),
            )
        )
        await job.emit(
            VideoReady(
                quality=quality,
                storage_key=stored.storage_key,
                duration_seconds=stored.duration_seconds,
                size_bytes=stored.size_bytes,
                width_pixels=stored.width_pixels,
                height_pixels=stored.height_pixels,
                encoder=stored.encoder,
                subtitles_storage_key=narration.subtitles_storage_key,
            ),
            changes,
        )
        return stored.size_bytes

    async def _stored_bytes(self, job: JobEvents, narration: SpokenNarration, video_bytes: int) -> int | None:
        """What the job's assets take in storage; None (left as it was) when media cannot say: a finished
        meditation is not failed for its bookkeeping, which then undercounts it.

        Added up from what this attempt stored (the narration's assets and the videos): listing storage's
        folders cost a request per folder, three per job. A resumed job's earlier attempts may have left
        assets of their own, so its folders are measured instead, as they are when media did not say."""
        if narration.stored_bytes and not job.is_resumed:
            return narration.stored_bytes + video_bytes
        try:
            return await self._media.measure_meditation_assets(job.meditation)
        except GatewayError as error:
            logger.warning("%s: its stored bytes were not measured (%s)", job.meditation, error.message)
            return None

    @contextlib.asynccontextmanager
    async def _stage(
        self,
        job: JobEvents,
        stage: Stage,
        timeout_seconds: float,
        *,
        ends_soon: bool = False,
        after: asyncio.Future[Any] | None = None,
    ) -> AsyncIterator[_StageRun]:
        """Reports a stage's start and end, enforces its deadline, and adds its time to the job's totals.

        The start's write goes on beside the stage's work rather than before it: with fifty people arriving
        together, the source and transcript stages' starts were two of the database round trips (queued on
        the gateway's event loop) between a job's launch and its first call to a provider. The start keeps
        its place in the log before everything the stage records, and a start that could not be recorded
        fails the stage once its work is done, as it failed it before.

        With `ends_soon`, a stage that succeeds waits for neither its start's write nor its end's: both are
        left going, in the run's `written`, for a later stage's `after`, writes (an earlier stage's) that
        fail that stage, as its own start would, once its work is done."""
        started = job.emit_soon(StageChanged(stage=stage, state=StageState.STARTED))
        try:
            async with self._stage_run(job, stage, timeout_seconds, ends_soon=ends_soon) as run:
                yield run
                # Shielded: a stage stopped while it waits must not cut the write short (the log's
                # numbering would be unsure); it finishes, and the stop is recorded after it.
                if not ends_soon:
                    await asyncio.shield(started)
                if after is not None:
                    await asyncio.shield(after)
            if run.written is not None:
                run.written = asyncio.gather(started, run.written)
        finally:
            # Never cancelled, for the same reason. When the stage failed first, that failure is the one
            # reported: the start's own (and the earlier end's) is only read.
            started.add_done_callback(_read_failure)
            if after is not None:
                after.add_done_callback(_read_failure)

    @contextlib.asynccontextmanager
    async def _stage_run(
        self, job: JobEvents, stage: Stage, timeout_seconds: float, *, ends_soon: bool = False
    ) -> AsyncIterator[_StageRun]:
        run = _StageRun()
        # A child of the attempt's `meditation.job` span; the stage's calls to content and media go beneath
        # it. Its status is set from the failure's kind, never from the message (it may quote a provider).
        with tracing.TRACER.start_as_current_span(
            f"stage.{stage.value}", record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                async with asyncio.timeout(timeout_seconds):
                    yield run
            except TimeoutError:
                failure = GatewayError(
                    FailureKind.DEADLINE, f"the {stage.value} stage took longer than {timeout_seconds:g} s"
                )
                _mark_failed(span, failure)
                await self._stage_failed(job, stage, run, failure)
                raise failure from None
            except GatewayError as error:
                _mark_failed(span, error)
                await self._stage_failed(job, stage, run, error)
                raise
            except asyncio.CancelledError:
                # Stopped from outside: a cancel, a shutdown, or a transcript that fell back and is spoken
                # afresh. Close the stage in the log, so no client sees it open for ever; a replica that lost
                # the job cannot write any more, and that is fine.
                with contextlib.suppress(GatewayError):
                    await self._end_stage(job, stage, run, StageState.STOPPED)
                raise
            if ends_soon:
                run.written = self._end_stage_soon(job, stage, run, StageState.SUCCEEDED, run.detail)
            else:
                await self._end_stage(job, stage, run, StageState.SUCCEEDED, run.detail)

    async def _stage_done_elsewhere(
        self, job: JobEvents, stage: Stage, elapsed_seconds: float, detail: str, provider: str
    ) -> None:
        """Reports a stage that another service ran and timed (its start and its end, told together), in the
        job's totals and metrics as any other."""
        await job.emit(StageChanged(stage=stage, state=StageState.STARTED))
        run = _StageRun(already_elapsed_seconds=elapsed_seconds)
        run.provider = provider
        await self._end_stage(job, stage, run, StageState.SUCCEEDED, detail)

    async def _stage_failed(self, job: JobEvents, stage: Stage, run: _StageRun, error: GatewayError) -> None:
        await self._end_stage(job, stage, run, StageState.FAILED, error.message)

    async def _end_stage(
        self, job: JobEvents, stage: Stage, run: _StageRun, state: StageState, detail: str = ""
    ) -> None:
        """Closes a stage: its time in the job's totals, its duration metric, and its StageChanged event."""
        await job.emit(_closed(job, stage, run, state, detail))

    def _end_stage_soon(
        self, job: JobEvents, stage: Stage, run: _StageRun, state: StageState, detail: str = ""
    ) -> asyncio.Future[None]:
        """Closes a stage as _end_stage does, its event's write started and returned, not waited for."""
        return job.emit_soon(_closed(job, stage, run, state, detail))


def _closed(job: JobEvents, stage: Stage, run: _StageRun, state: StageState, detail: str) -> StageChanged:
    """A stage's end: its time added to the job's totals and its duration metric recorded; its event."""
    job.add_stage_time(stage, run.elapsed_seconds)
    run.measure(stage, state)
    return StageChanged(stage=stage, state=state, stage_elapsed_seconds=run.elapsed_seconds, detail=detail)


class _Started(Generic[T]):
    """An async generator set running at once, up to its first item, to be read later: a call it makes is
    under way while other work goes on. Read it once; `aclose` ends it however far it got."""

    def __init__(self, generator: AsyncGenerator[T, None]) -> None:
        self._generator = generator
        self._first: asyncio.Future[T] = asyncio.ensure_future(anext(generator))

    def __aiter__(self) -> AsyncIterator[T]:
        return self._items()

    async def _items(self) -> AsyncIterator[T]:
        try:
            first = await self._first
        except StopAsyncIteration:
            return
        yield first
        async for item in self._generator:
            yield item

    async def aclose(self) -> None:
        if not self._first.done():
            self._first.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._first
        await self._generator.aclose()


class _LiveScript:
    """The transcript's text as it arrives, handed to the narrator in the same order. It is kept whole, so
    a narration retried on another media replica hears the script again from its start."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._is_complete = False
        self._changed = asyncio.Event()

    def add(self, text: str) -> None:
        """Adds more script text: whole sentences, as the content service releases them."""
        self._pieces.append(text)
        self._changed.set()

    def end(self) -> None:
        """Marks the script complete."""
        self._is_complete = True
        self._changed.set()

    async def texts(self) -> AsyncIterator[str]:
        """Every piece from the start, then new ones as they come, until the script is complete."""
        sent = 0
        while True:
            while sent < len(self._pieces):
                yield self._pieces[sent]
                sent += 1
            if self._is_complete:
                return
            self._changed.clear()
            if sent == len(self._pieces) and not self._is_complete:
                await self._changed.wait()


def _provider_detail(what: str, provider: str, is_cached: bool, fallback_reason: str) -> str:
    """A stage's detail; a fallback is announced here, in the stream, with its reason."""
    detail = f"{what} by {provider}" + (" (cached)" if is_cached else "")
    return f"{detail}; fell back to offline: {fallback_reason}" if fallback_reason else detail


def _result_if_ready(task: asyncio.Task[GeneratedImage]) -> GeneratedImage | None:
    """The image if it is already painted; the QUICK video does not wait for it."""
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return None


def _read_failure(write: asyncio.Future[None]) -> None:
    """Reads a write's failure that another one overtook, so asyncio does not report it as never read."""
    if not write.cancelled():
        write.exception()


def _mark_failed(span: Span, error: GatewayError) -> None:
    span.set_attribute(tracing.FAILURE_KIND_ATTRIBUTE, error.kind.value)
    span.set_status(StatusCode.ERROR, error.kind.value)
