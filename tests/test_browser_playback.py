"""Rendered videos play in a real browser: headless Chromium loads, seeks, shows and sounds them."""

from __future__ import annotations

import asyncio
import http.client
import re
import shutil
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw

from services.media.live import SpokenSentence
from services.media.speech import EspeakNarrator, encode_wav
from services.media.subtitles import webvtt
from services.media.video import (
    ENHANCED_PROFILE,
    QUICK_PROFILE,
    RenderedVideo,
    RenderProfile,
    render_still_video,
)
from services.proto_time import seconds_of
from services.storage.local import LocalAssetStorage
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc
from tests.chromium import missing_chromium
from tests.data_plane import is_ci
from tests.playback import MEDIA_PREFIX, ChromiumPlayer, PlaybackReport, serving

pytestmark = pytest.mark.e2e

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
IMAGE_SIZE = (1792, 1024)
# One clear colour per quadrant: a picture that is mirrored, rotated, tinted or black cannot pass.
QUADRANT_COLOURS = ((196, 62, 48), (46, 164, 92), (52, 78, 190), (224, 196, 72))
DURATION_TOLERANCE_SECONDS = 0.5
# 4:2:0 chroma, scaling and the YUV round trip move a mean by a level or two; a wrong picture, by tens.
MEAN_TOLERANCE_LEVELS = 6.0
QUADRANT_TOLERANCE_LEVELS = 12.0
PLAYBACK_TIMEOUT_SECONDS = 20.0
# How far a cue Chromium shows may be from its sentence's timing (the bound).
CUE_TOLERANCE_SECONDS = 0.150

RGB = tuple[float, float, float]


class Scene:
    """The test picture, the narration, and what a browser should show and play."""

    def __init__(self, image_path: Path, audio_path: Path, duration_seconds: float) -> None:
        self.image_path = image_path
        self.audio_path = audio_path
        self.duration_seconds = duration_seconds
        pixels = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float64)
        height, width = pixels.shape[:2]
        self.mean_rgb = _rgb(pixels.mean(axis=(0, 1)))
        self.quadrant_mean_rgb = tuple(
            _rgb(pixels[rows, columns].mean(axis=(0, 1)))
            for rows in (slice(0, height // 2), slice(height // 2, height))
            for columns in (slice(0, width // 2), slice(width // 2, width))
        )


def _rgb(values: npt.NDArray[np.float64]) -> RGB:
    return (float(values[0]), float(values[1]), float(values[2]))


@pytest.fixture(scope="module")
def chromium() -> Iterator[ChromiumPlayer]:
    """One Chromium for the module's checks; CI must have it (never skip there), a developer's machine may
    not. A broken install fails here, with Chromium's own message."""
    missing = missing_chromium()
    if missing is not None:
        if is_ci():
            pytest.fail(missing)
        pytest.skip(missing)
    player = ChromiumPlayer()
    try:
        yield player
    finally:
        player.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    """A textured four-colour picture and about 20 s of espeak narration with pauses."""
    directory = tmp_path_factory.mktemp("scene")
    width, height = IMAGE_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.empty((height, width, 3), dtype=np.float32)
    for index, colour in enumerate(QUADRANT_COLOURS):
        rows = slice(0, height // 2) if index < 2 else slice(height // 2, height)
        columns = slice(0, width // 2) if index % 2 == 0 else slice(width // 2, width)
        pixels[rows, columns] = colour
    # Gentle texture, so the encoder has real detail to keep, not four flat blocks.
    pixels += (12 * np.sin(x / 37) * np.cos(y / 53))[..., None]
    image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for index in range(8):
        left, top = 200 * index + 40, 110 * index + 20
        draw.ellipse((left, top, left + 150, top + 110), outline=(245, 240, 228), width=5)
    image_path = directory / "scene.png"
    image.save(image_path)

    async def narrate() -> bytes:
        narrator = EspeakNarrator()
        try:
            script = (
                "Settle into a comfortable position. [pause 3s] Let your breath find its own pace. "
                "[pause 3s] Notice the air, cool as it enters and warm as it leaves. [pause 3s] "
                "Rest here, soft and still."
            )
            return encode_wav(await narrator.narrate(script))
        finally:
            narrator.close()

    audio_path = directory / "narration.wav"
    audio_path.write_bytes(asyncio.run(narrate()))
    with wave.open(str(audio_path), "rb") as wav:
        duration_seconds = wav.getnframes() / wav.getframerate()
    assert 15 < duration_seconds < 30, duration_seconds
    return Scene(image_path, audio_path, duration_seconds)


@pytest.fixture(scope="module")
def videos(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> dict[str, RenderedVideo]:
    """The scene rendered once with each profile, by profile name; tests copy what they damage."""
    directory = tmp_path_factory.mktemp("videos")

    async def render_all() -> list[RenderedVideo]:
        return [
            await render_still_video(
                ffmpeg_path=FFMPEG,
                image_path=scene.image_path,
                audio_path=scene.audio_path,
                duration_seconds=scene.duration_seconds,
                output_path=directory / f"{profile.name}.mp4",
                profile=profile,
            )
            for profile in (QUICK_PROFILE, ENHANCED_PROFILE)
        ]

    return {video.path.stem: video for video in asyncio.run(render_all())}


async def _play(path: Path, chromium: ChromiumPlayer, subtitles_path: Path | None = None) -> PlaybackReport:
    return await chromium.play(path, subtitles_path=subtitles_path, timeout_seconds=PLAYBACK_TIMEOUT_SECONDS)


def playback_problems(report: PlaybackReport, scene: Scene, size_pixels: tuple[int, int]) -> list[str]:
    """Everything that keeps the report from showing the scene played properly; empty when it did."""
    if report.error is not None:
        return [f"Chromium: {report.error}"]
    problems: list[str] = []
    if report.duration_seconds is None or (
        abs(report.duration_seconds - scene.duration_seconds) > DURATION_TOLERANCE_SECONDS
    ):
        problems.append(f"duration {report.duration_seconds} s, narration {scene.duration_seconds:.3f} s")
    if (report.width_pixels, report.height_pixels) != size_pixels:
        problems.append(f"picture {report.width_pixels}x{report.height_pixels}, rendered {size_pixels}")
    middle = scene.duration_seconds / 2
    if (
        report.seeked_to_seconds is None
        or abs(report.seeked_to_seconds - middle) > DURATION_TOLERANCE_SECONDS
    ):
        problems.append(f"seeked to {report.seeked_to_seconds} s, not the middle ({middle:.3f} s)")
    if report.middle_frame_black_fraction is None or report.middle_frame_black_fraction > 0.01:
        problems.append(f"{report.middle_frame_black_fraction} of the middle frame is black")
    problems += _colour_problems("mean", report.middle_frame_mean_rgb, scene.mean_rgb, MEAN_TOLERANCE_LEVELS)
    quadrants = report.middle_frame_quadrant_mean_rgb or ()
    if len(quadrants) != len(scene.quadrant_mean_rgb):
        problems.append(f"{len(quadrants)} quadrant means reported")
    for index, (seen, expected) in enumerate(zip(quadrants, scene.quadrant_mean_rgb, strict=False)):
        problems += _colour_problems(f"quadrant {index}", seen, expected, QUADRANT_TOLERANCE_LEVELS)
    if not report.audio_decoded_bytes:
        problems.append("no narration was decoded while playing")
    if not report.video_decoded_bytes:
        problems.append("no picture was decoded")
    if not report.played_seconds or report.played_seconds <= 0:
        problems.append("playback did not advance from the middle")
    return problems


def _colour_problems(what: str, seen: RGB | None, expected: RGB, tolerance: float) -> list[str]:
    if seen is None:
        return [f"no {what} colour reported"]
    difference = max(abs(a - b) for a, b in zip(seen, expected, strict=True))
    if difference > tolerance:
        shown = tuple(round(value, 1) for value in seen)
        wanted = tuple(round(value, 1) for value in expected)
        return [f"{what} colour {shown}, image {wanted} (off by {difference:.1f} levels)"]
    return []


@pytest.mark.parametrize("profile", [QUICK_PROFILE, ENHANCED_PROFILE], ids=lambda profile: profile.name)
async def test_rendered_video_plays_in_chromium_with_its_duration_and_picture(
    chromium: ChromiumPlayer, profile: RenderProfile, scene: Scene, videos: dict[str, RenderedVideo]
) -> None:
    video = videos[profile.name]

    report = await _play(video.path, chromium)

    assert playback_problems(report, scene, (video.width_pixels, video.height_pixels)) == [], report


def _truncate_in_header(data: bytes) -> bytes:
    return data[:2000]


def _truncate_in_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _drop_media_data(data: bytes) -> bytes:
    # `+faststart` puts the index (moov) first: without the media data after it the file still opens.
    return data[: data.index(b"mdat") + 4]


def _garble_media_data(data: bytes) -> bytes:
    start = data.index(b"mdat") + 4
    noise = np.random.default_rng(7).integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    return data[:start] + noise


@pytest.mark.parametrize(
    "damage",
    [_truncate_in_header, _truncate_in_half, _drop_media_data, _garble_media_data],
    ids=lambda f: f.__name__,
)
async def test_damaged_mp4_fails_the_browser_check(
    chromium: ChromiumPlayer,
    damage: Callable[[bytes], bytes],
    scene: Scene,
    videos: dict[str, RenderedVideo],
    tmp_path: Path,
) -> None:
    video = videos[QUICK_PROFILE.name]
    damaged_path = tmp_path / "damaged.mp4"
    damaged_path.write_bytes(damage(video.path.read_bytes()))

    report = await _play(damaged_path, chromium)

    assert report.error is not None, report
    assert playback_problems(report, scene, (video.width_pixels, video.height_pixels)) != []


async def test_hls_playlist_of_the_video_plays_in_chromium_without_a_player_library(
    chromium: ChromiumPlayer, scene: Scene, videos: dict[str, RenderedVideo], tmp_path: Path
) -> None:
    video = videos[QUICK_PROFILE.name]
    playlist_path = tmp_path / "hls" / "index.m3u8"
    playlist_path.parent.mkdir()
    process = await asyncio.create_subprocess_exec(
        FFMPEG,
        *("-nostdin", "-loglevel", "error", "-i", str(video.path), "-c", "copy"),
        *("-f", "hls", "-hls_segment_type", "fmp4", "-hls_time", "4", "-hls_playlist_type", "vod"),
        str(playlist_path),
    )
    assert await process.wait() == 0

    report = await _play(playlist_path, chromium)

    assert playback_problems(report, scene, (video.width_pixels, video.height_pixels)) == [], report


async def test_media_server_answers_byte_ranges_as_chromium_asks_for_them(tmp_path: Path) -> None:
    """Chromium seeks in an MP4 with Range requests; a server that ignored them would hide seek bugs."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "clip.mp4").write_bytes(bytes(range(100)))
    (tmp_path / "beside.txt").write_text("not served")
    cases = {
        "bytes=10-19": (206, bytes(range(10, 20)), "bytes 10-19/100"),
        "bytes=90-": (206, bytes(range(90, 100)), "bytes 90-99/100"),
        "bytes=-5": (206, bytes(range(95, 100)), "bytes 95-99/100"),
        "bytes=95-500": (206, bytes(range(95, 100)), "bytes 95-99/100"),
        "bytes=100-": (416, b"", "bytes */100"),
    }
    async with serving(served) as origin:
        for header, expected in cases.items():
            answer = await asyncio.to_thread(_get, origin, f"{MEDIA_PREFIX}/clip.mp4", {"Range": header})
            assert answer == expected, header
        # Sent as written (http.client does not resolve the dots): nothing outside the folder is served.
        status, _, _ = await asyncio.to_thread(_get, origin, f"{MEDIA_PREFIX}/../beside.txt", {})
        assert status == 404


def _get(origin: str, path: str, headers: dict[str, str]) -> tuple[int, bytes, str | None]:
    """One GET: the status, the body and the Content-Range."""
    host, port = origin.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Range")
    finally:
        connection.close()


async def test_the_live_preview_playlist_plays_in_chromium(
    chromium: ChromiumPlayer, media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage
) -> None:
    from tests.media.test_live import SCRIPT, _requests

    responses = [r async for r in media_stub.NarrateLive(_requests(SCRIPT, 10))]
    completed = responses[-1].completed
    report = await _play(await storage.local_path(responses[0].playlist_ready.storage_key), chromium)
    assert report.error is None, report
    assert report.duration_seconds is not None
    assert abs(report.duration_seconds - seconds_of(completed.duration)) < 2.5
    assert report.middle_frame_mean_rgb is not None
    assert sum(report.middle_frame_mean_rgb) > 60  # the preview's calm gradient, not a black frame


async def test_chromium_shows_the_subtitles_in_time_with_the_sentences(
    chromium: ChromiumPlayer,
    media_stub: media_grpc.MediaServiceStub,
    storage: LocalAssetStorage,
    tmp_path: Path,
) -> None:
    """The page a person would use: the QUICK video in a <video>, its WebVTT through a <track>."""
    from tests.media.test_live import MEDITATION, SCRIPT, _requests

    completed = [r async for r in media_stub.NarrateLive(_requests(SCRIPT, 10))][-1].completed
    rendered = [
        r
        async for r in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(
                meditation=MEDITATION,
                narration_storage_key=completed.storage_key,
                narration_aac_storage_key=completed.aac_storage_key,
                subtitles_storage_key=completed.subtitles_storage_key,
                profile=media_pb.VIDEO_PROFILE_QUICK,
            )
        )
    ]
    # Served from one folder, as a web page and its media would be.
    video = tmp_path / "meditation.mp4"
    subtitles = tmp_path / "meditation.vtt"
    shutil.copyfile(await storage.local_path(rendered[-1].uploaded.storage_key), video)
    shutil.copyfile(await storage.local_path(completed.subtitles_storage_key), subtitles)

    report = await _play(video, chromium, subtitles)

    assert report.error is None, report
    assert report.cues is not None
    sentences = [
        (seconds_of(s.start_offset), seconds_of(s.end_offset), _spoken(s.text)) for s in completed.sentences
    ]
    assert len(report.cues) == len(sentences) == 7
    for cue, (start, end, text) in zip(report.cues, sentences, strict=True):
        assert abs(cue.start_seconds - start) <= CUE_TOLERANCE_SECONDS, (cue, start)
        assert abs(cue.end_seconds - end) <= CUE_TOLERANCE_SECONDS, (cue, end)
        assert " ".join(cue.text.split()) == text
    # After the seek to the middle, Chromium shows the sentence spoken there, and only that one.
    assert report.seeked_to_seconds is not None
    middle = report.seeked_to_seconds
    assert report.active_cue_texts_at_middle is not None
    assert [" ".join(text.split()) for text in report.active_cue_texts_at_middle] == [
        text for start, end, text in sentences if start <= middle < end
    ]


async def test_chromium_shows_escaped_cue_text_exactly_as_it_was_written(
    chromium: ChromiumPlayer, videos: dict[str, RenderedVideo], tmp_path: Path
) -> None:
    """WebVTT's special characters reach the viewer as written, never as markup or a broken cue."""
    written = [
        "Tea & toast <with> honey --> later.",
        "A <b>bold</b> claim &amp; a quiet one, said slowly so that the line has to wrap in two.",
    ]
    video = tmp_path / "scene.mp4"
    shutil.copyfile(videos[QUICK_PROFILE.name].path, video)
    subtitles = tmp_path / "scene.vtt"
    subtitles.write_text(
        webvtt([SpokenSentence(written[0], 1.0, 4.0), SpokenSentence(f"{written[1]} [pause 2s]", 4.0, 9.0)]),
        encoding="utf-8",
    )

    report = await _play(video, chromium, subtitles)

    assert report.error is None, report
    assert report.cues is not None
    assert [(cue.start_seconds, cue.end_seconds) for cue in report.cues] == [(1.0, 4.0), (4.0, 9.0)]
    assert [" ".join(cue.text.split()) for cue in report.cues] == written
    assert [cue.text.count("\n") for cue in report.cues] == [0, 1]


def _spoken(text: str) -> str:
    """The sentence without its pause marks (the test's own reading of the notation)."""
    return " ".join(re.sub(r"\[pause [0-9.]+s\]", " ", text).split())
