"""The reference pipeline: the system Stillpoint replaces, reproduced faithfully from its documents.

database (load the conversation, collect source content) → transcript (GPT-4o, one non-streamed chat
completion) ∥ image (DALL-E 3, `images.generate`, fetched from its URL) → speech (gpt-4o-mini-tts, the whole
script in one `audio.speech` call, MP3 written to a file) → the reference encode (its FFmpeg command as
written) → upload of the MP4 with storage3. Nothing reaches the person until the upload is done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import openai
from storage3 import AsyncStorageClient

from bench.jobs import JobTimeline, StageSpan
from bench.latency_model import REFERENCE_CHAT_MODEL, REFERENCE_IMAGE_MODEL, SPEECH_MODEL, DatabaseDelays

# The reference pipeline's encode budget (VIDEO_ENCODING_TIMEOUT in its settings): an encode past it
# failed the job.
REFERENCE_VIDEO_TIMEOUT_SECONDS = 120.0
REFERENCE_BUCKET = "videos"
# DALL-E 3's size when none is asked for; Stillpoint is asked for the same square image.
REFERENCE_IMAGE_SIZE = "1024x1024"
REFERENCE_VOICE = "alloy"
REFERENCE_SYSTEM_PROMPT = (
    "You are a calm meditation guide. Write a guided meditation of 400 to 500 words for the person whose "
    "conversation follows, in the second person, with pauses marked like [pause 3s]."
)
_T = TypeVar("_T")


def reference_encode_command(
    ffmpeg_path: str, image_path: Path, audio_path: Path, output_path: Path
) -> list[str]:
    """The reference encode: the reference pipeline's FFmpeg command as its optimisations document and
    MEASUREMENTS.md give it.

    It loops the image (`-loop 1`) into a 25 fps video until the audio ends (`-shortest`), which decodes the
    image again for every frame and encodes thousands of identical frames; with a PNG it keeps 4:4:4 chroma.
    `-hwaccel auto` only accelerates decoding, and finds nothing to accelerate on a CPU-only machine.
    """
    return [
        ffmpeg_path,
        "-y",
        *("-hwaccel", "auto"),
        *("-loop", "1", "-i", str(image_path)),
        *("-i", str(audio_path)),
        *("-c:v", "libx264", "-preset", "ultrafast", "-crf", "28"),
        *("-c:a", "aac", "-b:a", "96k"),
        *("-threads", "0"),
        "-shortest",
        *("-movflags", "+faststart"),
        str(output_path),
    ]


async def run_reference_encode(command: list[str]) -> float:
    """Runs the command (stdin closed, output discarded) and returns its wall time; raises on failure."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        tail = stderr.decode(errors="replace")[-1500:]
        raise RuntimeError(f"the reference encode failed ({process.returncode}): {tail}")
    return time.perf_counter() - started


class ReferencePipeline:
    """One process's clients, made once, as the reference pipeline's service held them."""

    def __init__(
        self,
        *,
        openai_client: openai.AsyncOpenAI,
        storage: AsyncStorageClient,
        http: httpx.AsyncClient,
        ffmpeg_path: str,
        work_dir: Path,
        database_delays: DatabaseDelays,
    ) -> None:
        self._openai = openai_client
        self._storage = storage
        self._http = http
        self._ffmpeg_path = ffmpeg_path
        self._work_dir = work_dir
        self._database_delays = database_delays

    async def prepare(self) -> None:
        """Creates the bucket the videos go to (not timed)."""
        buckets = {bucket.name for bucket in await self._storage.list_buckets()}
        if REFERENCE_BUCKET not in buckets:
            await self._storage.create_bucket(REFERENCE_BUCKET, options={"public": False})

    async def run(self, index: int, source_text: str) -> JobTimeline:
        """One job, from the request to the uploaded video; a failure is recorded, never raised."""
        timeline = JobTimeline(pipeline="reference", index=index)
        job_dir = self._work_dir / f"job-{index:03d}"
        job_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()

        async def timed(stage: str, work: Callable[[], Awaitable[_T]]) -> _T:
            stage_started = time.perf_counter() - started
            try:
                result = await work()
            except BaseException:
                timeline.stages.append(
                    StageSpan(stage, stage_started, time.perf_counter() - started, "failed")
                )
                raise
            timeline.stages.append(StageSpan(stage, stage_started, time.perf_counter() - started))
            return result

        try:
            # The reference pipeline loads the conversation and collects its source content from PostgreSQL:
            # a seeded sleep.
            await timed("source", lambda: asyncio.sleep(self._database_delays.next_seconds()))
            transcript, image = await asyncio.gather(
                timed("transcript", lambda: self._transcript(source_text)),
                timed("image", lambda: self._image(source_text, job_dir / "image.png")),
            )
            audio = await timed("narration", lambda: self._speech(transcript, job_dir / "speech.mp3"))
            video = job_dir / "video.mp4"
            command = reference_encode_command(self._ffmpeg_path, image, audio, video)
            encode_seconds = await timed("encode", lambda: run_reference_encode(command))
            if encode_seconds > REFERENCE_VIDEO_TIMEOUT_SECONDS:
                timeline.notes.append(
                    f"the encode took {encode_seconds:.1f} s, past the reference pipeline's own "
                    f"{REFERENCE_VIDEO_TIMEOUT_SECONDS:g} s VIDEO_ENCODING_TIMEOUT"
                )
            await timed("upload", lambda: self._upload(index, video))
        except Exception as error:  # a benchmark records a failed job and goes on
            timeline.error = f"{type(error).__name__}: {error}"[:500]
            return timeline
        finished = time.perf_counter() - started
        # The reference pipeline delivers nothing until the end: the one video is the first event, the first
        # playable media, and stands for both the QUICK and the ENHANCED video.
        timeline.milestones = dict.fromkeys(timeline.milestones, finished)
        timeline.first_playable_kind = "completed"
        timeline.succeeded = True
        return timeline

    async def _transcript(self, source_text: str) -> str:
        completion = await self._openai.chat.completions.create(
            model=REFERENCE_CHAT_MODEL,
            messages=[
                {"role": "system", "content": REFERENCE_SYSTEM_PROMPT},
                {"role": "user", "content": source_text},
            ],
        )
        text = completion.choices[0].message.content if completion.choices else None
        if not text:
            raise RuntimeError("the chat completion had no text")
        return text

    async def _image(self, source_text: str, path: Path) -> Path:
        prompt = f"A peaceful, serene meditation landscape inspired by: {source_text[:300]}"
        response = await self._openai.images.generate(
            model=REFERENCE_IMAGE_MODEL, prompt=prompt, size=REFERENCE_IMAGE_SIZE, n=1
        )
        if not response.data or not response.data[0].url:
            raise RuntimeError("the image response had no URL")
        download = await self._http.get(response.data[0].url)
        download.raise_for_status()
        await asyncio.to_thread(path.write_bytes, download.content)
        return path

    async def _speech(self, transcript: str, path: Path) -> Path:
        response = await self._openai.audio.speech.create(
            model=SPEECH_MODEL, voice=REFERENCE_VOICE, input=transcript, response_format="mp3"
        )
        await asyncio.to_thread(path.write_bytes, response.content)
        return path

    async def _upload(self, index: int, video: Path) -> None:
        data = await asyncio.to_thread(video.read_bytes)
        await self._storage.from_(REFERENCE_BUCKET).upload(
            f"meditations/{index:03d}-{time.time_ns()}.mp4",
            data,
            {"content-type": "video/mp4", "cache-control": "3600", "upsert": "false"},
        )
