"""Subtitles: the live narration stores WebVTT cues timed by its sentences, and both videos carry them as a
soft `mov_text` track. Everything is read back with FFmpeg's own parsers (through PyAV)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pytest
from PIL import Image

from services.media.live import SpokenSentence
from services.media.subtitles import webvtt
from services.proto_time import seconds_of
from services.storage.local import LocalAssetStorage
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc
from tests.media.test_live import MEDITATION, _requests

# A pause mark, a long sentence, WebVTT's special characters, and a bracketed stage direction (which ends no
# sentence, so the last two sentences are spoken, and shown, as one).
SCRIPT = (
    "Take a moment to arrive. [pause 2s] Let your shoulders soften, and your hands grow heavy, as the "
    "evening settles around you. [pause 1.5s] Tea & toast <with> honey --> later. [soft music] Rest now."
)
# What a viewer reads: the spoken words only.
SHOWN = [
    "Take a moment to arrive.",
    "Let your shoulders soften, and your hands grow heavy, as the evening settles around you.",
    "Tea & toast <with> honey --> later. Rest now.",
]
_TIMING_LINE = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} --> \d{2}:\d{2}:\d{2}\.\d{3}$")


@dataclass(frozen=True)
class Cue:
    start_ms: int
    end_ms: int
    lines: tuple[str, ...]


def _unescaped(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def webvtt_cues(path: Path) -> list[Cue]:
    """The cues as FFmpeg's WebVTT demuxer reads them, text unescaped as a player shows it."""
    with av.open(str(path), format="webvtt") as container:
        stream = container.streams.subtitles[0]
        assert stream.time_base == Fraction(1, 1000)
        return [
            Cue(
                int(packet.pts),
                int(packet.pts + packet.duration),
                tuple(_unescaped(line) for line in bytes(packet).decode().split("\n")),
            )
            for packet in container.demux(stream)
            if packet.size and packet.pts is not None and packet.duration
        ]


def mov_text_track(path: Path) -> tuple[str, str, list[Cue]]:
    """An MP4's subtitle track: its codec, its language and its non-empty samples as cues."""
    with av.open(str(path)) as container:
        [stream] = container.streams.subtitles
        assert stream.time_base is not None
        cues = []
        for packet in container.demux(stream):
            if not packet.size or packet.pts is None:
                continue
            payload = bytes(packet)
            # A mov_text sample: the text's length in two big-endian bytes, the text, then style boxes.
            length = int.from_bytes(payload[:2], "big")
            if length == 0:  # the empty sample that fills a gap between cues
                continue
            start = packet.pts * stream.time_base
            end = (packet.pts + (packet.duration or 0)) * stream.time_base
            text = payload[2 : 2 + length].decode()
            cues.append(Cue(round(start * 1000), round(end * 1000), tuple(text.split("\n"))))
        return stream.codec_context.name, stream.metadata.get("language", ""), cues


async def _narrate(
    stub: media_grpc.MediaServiceStub, script: str = SCRIPT
) -> media_pb.LiveNarrationCompleted:
    responses = [response async for response in stub.NarrateLive(_requests(script, 7))]
    return responses[-1].completed


def _expected_cues(completed: media_pb.LiveNarrationCompleted) -> list[tuple[int, int, str]]:
    return [
        (
            round(seconds_of(sentence.start_offset) * 1000),
            round(seconds_of(sentence.end_offset) * 1000),
            shown,
        )
        for sentence, shown in zip(completed.sentences, SHOWN, strict=True)
    ]


async def test_the_narrations_subtitles_have_a_cue_per_sentence_timed_as_it_is_heard(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage
) -> None:
    completed = await _narrate(media_stub)

    assert completed.subtitles_storage_key.startswith("videos/0123456789abcdef/")
    assert completed.subtitles_storage_key.endswith(".vtt")
    path = await storage.local_path(completed.subtitles_storage_key)
    cues = webvtt_cues(path)
    assert [(cue.start_ms, cue.end_ms, " ".join(cue.lines)) for cue in cues] == _expected_cues(completed)
    # Cue for cue, the sentences follow one another with no gap: the whole narration is covered.
    assert cues[0].start_ms == 0
    assert cues[-1].end_ms == round(seconds_of(completed.duration) * 1000)
    # The long sentence is wrapped into two lines of similar length; short ones stay on one.
    assert [len(cue.lines) for cue in cues] == [1, 2, 2]
    assert max(len(line) for line in cues[1].lines) <= 46
    text = path.read_text(encoding="utf-8")
    assert text.startswith("WEBVTT\n")
    assert "pause" not in text and "[" not in text and "soft music" not in text
    assert "Tea &amp; toast &lt;with&gt; honey\n--&gt; later. Rest now.\n" in text
    # The only "-->" left separates a cue's timings.
    assert [line for line in text.splitlines() if "-->" in line] == [
        line for line in text.splitlines() if _TIMING_LINE.fullmatch(line)
    ]
    assert len([line for line in text.splitlines() if _TIMING_LINE.fullmatch(line)]) == 3


def test_a_sentence_of_pause_marks_alone_has_no_cue_and_times_are_exact_to_the_millisecond(
    tmp_path: Path,
) -> None:
    sentences = [
        SpokenSentence("[pause 3s]", 0.0, 3.0),
        SpokenSentence("Breathe   in.\nAnd [pause 2s] out. [pause 1s]", 3.0, 3723.4567),
        SpokenSentence("Too short to show.", 3723.4567, 3723.4569),
        SpokenSentence("A <b>bold</b> & --> claim.", 3723.4569, 3725.0),
    ]
    path = tmp_path / "subtitles.vtt"
    path.write_text(webvtt(sentences), encoding="utf-8")

    assert webvtt_cues(path) == [
        Cue(3000, 3_723_457, ("Breathe in. And out.",)),
        Cue(3_723_457, 3_725_000, ("A <b>bold</b> & --> claim.",)),
    ]
    text = path.read_text(encoding="utf-8")
    assert "01:02:03.457" in text
    assert "<b>" not in text and "--> claim" not in text


@pytest.mark.parametrize(
    "profile", [media_pb.VIDEO_PROFILE_QUICK, media_pb.VIDEO_PROFILE_ENHANCED], ids=["quick", "enhanced"]
)
async def test_both_videos_carry_the_subtitles_as_an_english_mov_text_track(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage, profile: int
) -> None:
    completed = await _narrate(media_stub)
    picture = io.BytesIO()
    Image.new("RGB", (640, 360), (90, 120, 160)).save(picture, format="PNG")
    image = await storage.put_bytes("images/subtitles.png", picture.getvalue(), "image/png")

    rendered = [
        response
        async for response in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(
                meditation=MEDITATION,
                image_storage_key=image.key,
                narration_storage_key=completed.storage_key,
                narration_aac_storage_key=completed.aac_storage_key,
                subtitles_storage_key=completed.subtitles_storage_key,
                profile=profile,  # type: ignore[arg-type]
            )
        )
    ]

    video = await storage.local_path(rendered[-1].uploaded.storage_key)
    codec, language, cues = mov_text_track(video)
    assert (codec, language) == ("mov_text", "eng")
    assert [(cue.start_ms, cue.end_ms, " ".join(cue.lines)) for cue in cues] == _expected_cues(completed)
    with av.open(str(video)) as container:
        assert {stream.type for stream in container.streams} == {"video", "audio", "subtitle"}


async def test_a_video_rendered_without_subtitles_has_no_subtitle_track(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage
) -> None:
    completed = await _narrate(media_stub, "Breathe in. [pause 1s] And out.")

    rendered = [
        response
        async for response in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(
                meditation=MEDITATION,
                narration_storage_key=completed.storage_key,
                narration_aac_storage_key=completed.aac_storage_key,
                profile=media_pb.VIDEO_PROFILE_QUICK,
            )
        )
    ]

    with av.open(str(await storage.local_path(rendered[-1].uploaded.storage_key))) as container:
        assert {stream.type for stream in container.streams} == {"video", "audio"}


async def test_the_subtitles_are_measured_and_erased_with_the_meditation(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage
) -> None:
    completed = await _narrate(media_stub, "Breathe in. [pause 1s] And out.")
    subtitles = await storage.local_path(completed.subtitles_storage_key)
    meditation_id = MEDITATION.split("/")[1]
    files = [path for path in storage.root.rglob("*") if path.is_file() and meditation_id in path.parts]
    assert subtitles in files

    measured = await media_stub.MeasureMeditationAssets(
        media_pb.MeasureMeditationAssetsRequest(meditation=MEDITATION)
    )
    assert measured.size_bytes == sum(path.stat().st_size for path in files)
    # The narration says so itself (its own assets, and the QUICK video it made), so the gateway needs no
    # listing for a meditation's first attempt.
    assert completed.stored_bytes + completed.quick_video.size_bytes == measured.size_bytes

    deleted = await media_stub.DeleteMeditationAssets(
        media_pb.DeleteMeditationAssetsRequest(meditation=MEDITATION)
    )
    assert deleted.deleted_count == len(files)
    assert not subtitles.exists()
