"""The encoder process: live narrations encoded, and still videos muxed, in a child of the media process, as
they would be in it."""

from __future__ import annotations

import asyncio
import errno
import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import PIL.Image
import psutil
import pytest

from services.media import encoder_process
from services.media.encoder_process import (
    EncoderProcess,
    EncoderProcessEndedError,
    _failure,
    _raised,
    plain_values,
)
from services.media.encoders import EncoderSelection
from services.media.errors import EncodingError, InvalidInputError, ScratchSpaceError
from services.media.live import _read_playlist
from services.media.live_encoder import LiveEncoder, NarrationEncoder, WaitingSound
from services.media.scratch import disk_full_reported
from services.media.speech import EspeakNarrator
from services.media.still_mux import MuxedStill
from services.media.studio import MediaStudio
from services.media.urgency import BACKGROUND_NICENESS, CpuLane, urgent
from services.media.video import (
    QUICK_PROFILE,
    VideoStored,
    copying_sound,
    muxed_here,
    narration_seconds,
)
from services.storage.base import new_key
from services.storage.local import LocalAssetStorage

RATE = 24_000


@pytest.fixture
def ends() -> list[str]:
    """How the test's encoder processes ended unasked, as media's metrics are told."""
    return []


@pytest.fixture
def encoders(ends: list[str]) -> Iterator[EncoderProcess]:
    """An encoder process of the test's own, which it may kill or stop."""
    process = EncoderProcess(1, on_unexpected_end=ends.append)
    process.start()
    yield process
    process.stop()


def _sounds(work_dir: Path) -> list[WaitingSound]:
    """Three sentences waiting in `work_dir` as the live narration leaves them: two spoken, one of pauses."""
    work_dir.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(7)
    sounds = []
    for index, seconds in enumerate((1.4, 2.2)):
        times = np.arange(round(seconds * RATE)) / RATE
        tone = 0.3 * np.sin(2 * np.pi * (180 + 40 * index) * times) + generator.normal(0, 0.01, times.size)
        path = work_dir / f"sentence-{index:05d}.pcm"
        path.write_bytes((tone * 32767).astype("<i2").tobytes())
        sounds.append(WaitingSound(sample_rate_hertz=RATE, path=path, samples=times.size))
    return [*sounds, WaitingSound(sample_rate_hertz=RATE, samples=RATE // 2)]


def _encoded(encoder: NarrationEncoder, sounds: list[WaitingSound]) -> list[int]:
    try:
        counts = encoder.write_all(sounds[:1], 0, 2) + encoder.write_all(sounds[1:], 1, 2)
        encoder.close()
    finally:
        encoder.abandon()
    return counts


def _next_narration_is_encoded_by_a_new_process(encoders: EncoderProcess, work_dir: Path, ended: int) -> None:
    """The next narration opens its encoder in a new process, and is encoded there as if nothing happened."""
    sounds = _sounds(work_dir)
    encoder = encoders.open(work_dir, RATE)
    assert encoders.pid not in (None, ended)
    assert sum(_encoded(encoder, sounds)) == round(4.1 * RATE)


def test_a_narration_encoded_in_the_encoder_process_is_the_one_encoded_here(
    tmp_path: Path, encoders: EncoderProcess
) -> None:
    here_sounds, there_sounds = _sounds(tmp_path / "here"), _sounds(tmp_path / "there")
    here = LiveEncoder(tmp_path / "here", RATE)
    there = encoders.open(tmp_path / "there", RATE)

    here_counts, there_counts = _encoded(here, here_sounds), _encoded(there, there_sounds)

    assert encoders.pid is not None and encoders.pid != os.getpid()
    assert there_counts == here_counts and sum(there_counts) == round(4.1 * RATE)
    # The same mastering, bed and AAC, byte for byte; the same pieces of the preview.
    assert there.aac_path == tmp_path / "there" / "narration.aac"
    assert there.aac_path.read_bytes() == here.aac_path.read_bytes()
    assert _read_playlist(tmp_path / "there" / "live.m3u8") == _read_playlist(tmp_path / "here" / "live.m3u8")
    # Each sentence's sound was taken from the scratch folder as it was encoded.
    assert not list((tmp_path / "there").glob("sentence-*.pcm"))


def _narration_made_here(work_dir: Path) -> Path:
    """A live narration's AAC, encoded in this process."""
    sounds = _sounds(work_dir)
    encoder = LiveEncoder(work_dir, RATE)
    _encoded(encoder, sounds)
    return encoder.aac_path


def test_a_still_video_muxed_in_the_encoder_process_is_the_one_muxed_here(
    tmp_path: Path, encoders: EncoderProcess
) -> None:
    aac = _narration_made_here(tmp_path / "narration")
    subtitles = tmp_path / "narration" / "subtitles.vtt"
    subtitles.write_text("WEBVTT\n\n00:00.000 --> 00:02.000\nBreathe in.\n")
    profile = copying_sound(QUICK_PROFILE)

    def muxed(muxer: Callable[..., MuxedStill | None], name: str) -> MuxedStill | None:
        return muxer(
            image_path=None,
            audio_path=aac,
            subtitles_path=subtitles,
            duration_seconds=4.1,
            output_path=tmp_path / name,
            profile=profile,
        )

    there, here = muxed(encoders.mux_still, "there.mp4"), muxed(muxed_here, "here.mp4")

    assert here is not None and here.height_pixels == 720 and here.duration_seconds >= 4.1
    assert there == here
    assert (tmp_path / "there.mp4").read_bytes() == (tmp_path / "here.mp4").read_bytes()
    # An image this system did not make is FFmpeg's to scale: the child says so, as muxed_here does.
    odd = tmp_path / "odd.png"
    PIL.Image.new("RGB", (100, 60), (40, 60, 80)).save(odd)
    assert (
        encoders.mux_still(
            image_path=odd,
            audio_path=aac,
            subtitles_path=None,
            duration_seconds=4.1,
            output_path=tmp_path / "odd.mp4",
            profile=profile,
        )
        is None
    )
    assert not (tmp_path / "odd.mp4").exists()


def test_a_narration_measured_in_the_encoder_process_is_measured_as_here(
    tmp_path: Path, encoders: EncoderProcess
) -> None:
    aac = _narration_made_here(tmp_path)
    assert encoders.narration_seconds(aac) == narration_seconds(aac) > 4.1
    # A file that is no narration is the caller's bad input, in either process.
    noise = tmp_path / "noise.aac"
    noise.write_bytes(b"not a sound " * 200)
    with pytest.raises(InvalidInputError, match="is not a readable narration, WAV or AAC") as raised:
        encoders.narration_seconds(noise)
    assert raised.value.field == "narration"


class _CountingEncoderProcess(EncoderProcess):
    """An encoder process that notes what the media process asked of it besides narrations."""

    def __init__(self) -> None:
        super().__init__(1)
        self.asked: list[str] = []

    def mux_still(self, **arguments: Any) -> MuxedStill | None:
        self.asked.append("mux_still")
        return super().mux_still(**arguments)

    def narration_seconds(self, path: Path) -> float:
        self.asked.append("narration_seconds")
        return super().narration_seconds(path)


async def test_a_studio_with_an_encoder_process_measures_and_muxes_a_live_narrations_video_there(
    tmp_path: Path, storage: LocalAssetStorage, narrator: EspeakNarrator
) -> None:
    aac = _narration_made_here(tmp_path / "narration")
    stored = await storage.put_file(new_key("narrations/m1", "narration.aac"), aac, "audio/aac", signed=False)
    process = _CountingEncoderProcess()
    process.start()
    (tmp_path / "work").mkdir()
    studio = MediaStudio(
        encoder_process=process,
        narrator=narrator,
        storage=storage,
        ffmpeg_path=imageio_ffmpeg.get_ffmpeg_exe(),
        encoders=EncoderSelection(selected="libx264", probes=("probing skipped in tests",)),
        work_root=tmp_path / "work",
        video_timeout_seconds=120,
    )
    try:
        events = [
            event
            async for event in studio.render(
                "m1", "", stored.key, QUICK_PROFILE, narration_aac_key=stored.key
            )
        ]
    finally:
        process.stop()

    assert process.asked == ["narration_seconds", "mux_still"]
    video = events[-1]
    assert isinstance(video, VideoStored) and video.height_pixels == 720
    assert video.duration_seconds == pytest.approx(narration_seconds(aac), abs=0.001)


def test_an_encoder_process_that_ends_fails_what_it_held_and_the_next_narration_starts_another(
    tmp_path: Path, encoders: EncoderProcess, ends: list[str]
) -> None:
    (tmp_path / "held").mkdir()
    held = encoders.open(tmp_path / "held", RATE)
    first = encoders.pid
    assert first is not None
    _killed(first)

    with pytest.raises(EncoderProcessEndedError, match=r"ended \(exit status -9\)"):
        held.write_all(_sounds(tmp_path / "held"), 0, 2)
    held.abandon()  # nothing left to close: no error on the way out of a failed narration
    assert ends == ["exited"]

    _next_narration_is_encoded_by_a_new_process(encoders, tmp_path / "again", first)


def test_an_encoder_process_that_stops_answering_is_killed_and_the_next_narration_starts_another(
    tmp_path: Path, encoders: EncoderProcess, ends: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encoder_process, "ANSWER_TIMEOUT_SECONDS", 0.5)
    (tmp_path / "stuck").mkdir()
    stuck = encoders.open(tmp_path / "stuck", RATE)
    hung = encoders.pid
    assert hung is not None
    # A sound that never comes: reading a FIFO nobody writes to blocks the child's worker thread for good.
    fifo = tmp_path / "stuck" / "sentence-00000.pcm"
    os.mkfifo(fifo)

    with pytest.raises(EncoderProcessEndedError, match=r"did not answer within 0\.5 s"):
        stuck.write_all([WaitingSound(sample_rate_hertz=RATE, path=fifo, samples=RATE)], 0, 0)

    assert _has_ended(hung, 10)
    assert ends == ["unanswered"]
    _next_narration_is_encoded_by_a_new_process(encoders, tmp_path / "next", hung)


def test_errors_in_the_encoder_process_are_raised_here_as_the_encoder_raises_them(
    tmp_path: Path, encoders: EncoderProcess
) -> None:
    # A scratch folder that is gone: FFmpeg's failure, as the encoder reports it.
    with pytest.raises(EncodingError, match="the live encoder failed") as gone:
        encoders.open(tmp_path / "gone", RATE)
    assert gone.value.detail  # FFmpeg's message, for operators
    # More sound after the end.
    (tmp_path / "closed").mkdir()
    encoder = encoders.open(tmp_path / "closed", RATE)
    _encoded(encoder, _sounds(tmp_path / "closed"))
    with pytest.raises(EncodingError, match="already closed"):
        encoder.write_all(_sounds(tmp_path / "closed"), 0, 2)


def test_a_full_disk_in_the_encoder_process_is_a_full_disk_here() -> None:
    carried = _raised(_failure(OSError(errno.ENOSPC, "No space left on device")))
    assert isinstance(carried, OSError) and carried.errno == errno.ENOSPC
    # Which the narration reports as the scratch disk being full.
    with pytest.raises(ScratchSpaceError), disk_full_reported():
        raise carried
    # Anything unforeseen is an encoding failure, its kind and words kept for operators only.
    unforeseen = _raised(_failure(KeyError("encoder-3")))
    assert isinstance(unforeseen, EncodingError) and str(unforeseen) == "the encoder process failed"
    assert unforeseen.detail == "KeyError: 'encoder-3'"


def test_the_media_process_reads_nothing_but_plain_values_from_the_encoder_process() -> None:
    """A child taken over through what it encodes must not be able to run code in the media process."""
    assert plain_values(pickle.dumps((3, True, [1024, 2048]))) == (3, True, [1024, 2048])
    assert plain_values(pickle.dumps((4, False, ("os", "full", "", errno.ENOSPC)))) == (
        4,
        False,
        ("os", "full", "", errno.ENOSPC),
    )
    for hostile in ((5, True, os.system), (6, True, Path("/etc/passwd")), (7, True, WaitingSound(1))):
        with pytest.raises(pickle.UnpicklingError, match="is not a plain value"):
            plain_values(pickle.dumps(hostile))
    with pytest.raises(ValueError, match="request's id"):
        plain_values(pickle.dumps(("7", True, None)))


def _has_ended(pid: int, timeout_seconds: float) -> bool:
    """Whether the process ends within the timeout, leaving it for whoever waits for it (its parent, whose
    wait reads its exit status)."""
    try:
        ended = os.pidfd_open(pid)  # readable once the process has ended, reaped or not
    except ProcessLookupError:
        return True  # ended and reaped already
    try:
        readable, _, _ = select.select([ended], [], [], timeout_seconds)
    finally:
        os.close(ended)
    return bool(readable)


def _killed(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    assert _has_ended(pid, 10)


def _niced_threads(pid: int) -> int:
    """How many of the process's threads run at BACKGROUND_NICENESS (the 19th field of /proc's stat)."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = task.joinpath("stat").read_text().rsplit(")", 1)[1].split()
        count += int(fields[16]) == BACKGROUND_NICENESS
    return count


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own niceness is Linux's")
async def test_background_work_is_encoded_in_a_lowered_thread_of_the_encoder_process(
    tmp_path: Path, encoders: EncoderProcess
) -> None:
    lane = CpuLane(1)
    try:
        (tmp_path / "job").mkdir()
        encoder = await asyncio.to_thread(encoders.open, tmp_path / "job", RATE)
        sounds = _sounds(tmp_path / "job")
        pid = encoders.pid
        assert pid is not None
        with urgent(True):
            await lane.run(encoder.write_all, sounds[:1], 0, 2)
        assert _niced_threads(pid) == 0
        # Neither urgent nor due: the lane's background, and the encoder process's.
        await lane.run(encoder.write_all, sounds[1:], 1, 2)
        assert _niced_threads(pid) == 1
        await asyncio.to_thread(encoder.abandon)
    finally:
        lane.shutdown()


def test_the_encoder_process_holds_none_of_the_media_processs_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-for-the-encoder")
    monkeypatch.setenv("DATABASE_URL", "postgresql://stillpoint:hunter2@db/stillpoint")
    # The image's own import path (the container's /app/gen) is kept, after the services' folder.
    monkeypatch.setenv("PYTHONPATH", "/nonexistent/gen")
    process = EncoderProcess(1)
    process.start()
    try:
        assert process.pid is not None
        environment = psutil.Process(process.pid).environ()
    finally:
        process.stop()
    assert "OPENAI_API_KEY" not in environment and "DATABASE_URL" not in environment
    assert not any("hunter2" in value or "sk-test" in value for value in environment.values())
    assert environment["PYTHONPATH"].split(os.pathsep)[1:] == ["/nonexistent/gen"]


def test_a_stopped_encoder_process_ends_and_opens_no_more_encoders(tmp_path: Path) -> None:
    ends: list[str] = []
    process = EncoderProcess(1, on_unexpected_end=ends.append)
    process.start()
    pid = process.pid
    assert pid is not None

    process.stop()

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert process.pid is None and ends == []  # asked to end: nothing for an operator
    with pytest.raises(EncoderProcessEndedError, match="stopped"):
        process.open(tmp_path, RATE)


def test_the_encoder_process_ends_with_the_media_process() -> None:
    """A media process killed outright (out of memory) leaves no encoder process behind."""
    media = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys
                from services.media.encoder_process import EncoderProcess
                process = EncoderProcess(1)
                process.start()
                print(process.pid, flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert media.stdout is not None
        child = int(media.stdout.readline())
        media.kill()
        media.wait(10)
        # Its requests' pipe closed with the media process: it ends on its own.
        assert _has_ended(child, 10), "the encoder process outlived the media process"
    finally:
        media.kill()
        media.wait()
