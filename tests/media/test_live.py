"""Live narration: sentences spoken while the script streams in, a playable playlist early, AAC reused."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import itertools
import threading
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import av
import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from services.media.live import (
    GROUP_CHARACTERS,
    LONGEST_SEGMENT_SECONDS,
    PUBLISHED_AHEAD_SECONDS,
    RUNNING_DRY_SECONDS,
    LiveNarration,
    LiveNarrationResult,
    PlaylistPublished,
    SpeakSentences,
    SpokenSegment,
    _group_pieces,
    _heard_within_horizon,
    _joined_pieces,
    _Published,
)
from services.media.live_encoder import LiveEncoder, WaitingSound, bed_envelope
from services.media.speech import EspeakNarrator, Narration
from services.media.urgency import DUE_HORIZON_SECONDS, CpuLane, PriorityLimiter, due_at, is_urgent
from services.media.video import probe_media
from services.proto_time import seconds_of
from services.script_marks import total_pause_seconds
from services.storage.local import LocalAssetStorage
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc
from tests.waiting import wait_until

MEDITATION = "meditations/0123456789abcdef"
SCRIPT = (
    "Take a moment to arrive. [pause 2s] Let your shoulders soften, and your hands grow heavy. "
    "Breathe in slowly, one, two, three, four. [pause 2s] And out, slowly. [pause 3s] "
    "Notice the sound of the sea, far away. Let it carry the day's worries. [pause 2s] "
    "When you are ready, open your eyes."
)


async def _requests(script: str, pieces: int, owner: str = "") -> AsyncIterator[media_pb.NarrateLiveRequest]:
    yield media_pb.NarrateLiveRequest(start=media_pb.NarrateLiveStart(meditation=MEDITATION, owner=owner))
    size = max(1, len(script) // pieces)
    for start in range(0, len(script), size):
        yield media_pb.NarrateLiveRequest(text=media_pb.NarrateLiveText(text=script[start : start + size]))
        # Text arrives over time, as a model streams it; the server must not rely on it all being there.
        await asyncio.sleep(0.01)
    yield media_pb.NarrateLiveRequest(end=media_pb.NarrateLiveEnd())


async def test_live_narration_publishes_a_playlist_then_the_whole_narration(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage
) -> None:
    responses = [response async for response in media_stub.NarrateLive(_requests(SCRIPT, 25))]
    assert [r.WhichOneof("event") for r in responses] == ["playlist_ready", "completed"]
    completed = responses[-1].completed
    duration = seconds_of(completed.duration)
    assert completed.sentences[0].text == "Take a moment to arrive. [pause 2s]"
    assert len(completed.sentences) == 7
    ends = [seconds_of(s.end_offset) for s in completed.sentences]
    starts = [seconds_of(s.start_offset) for s in completed.sentences]
    assert starts[1:] == ends[:-1]
    assert ends[-1] == pytest.approx(duration, abs=0.01)
    assert duration > 9  # the pauses alone hold nine seconds
    playlist_path = await storage.local_path(responses[0].playlist_ready.storage_key)
    playlist = playlist_path.read_text()
    assert playlist.startswith("#EXTM3U")
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
    listed = sum(
        float(line.split(":")[1].rstrip(",")) for line in playlist.splitlines() if line.startswith("#EXTINF")
    )
    assert abs(listed - duration) < 2.5
    # The first segment is one second, so the preview plays after the first sentence; later ones are longer,
    # so the narration is a handful of uploads rather than one a second.
    lengths = [
        float(line.split(":")[1].rstrip(",")) for line in playlist.splitlines() if line.startswith("#EXTINF")
    ]
    assert lengths[0] == pytest.approx(1.0, abs=0.05)
    assert len(lengths) < duration / 2
    assert all(length <= 2**index + 0.1 for index, length in enumerate(lengths))
    # A player reads the whole playlist: the init segment and every media segment it names.
    with av.open(str(playlist_path), options={"allowed_extensions": "ALL"}) as played:
        assert {stream.type for stream in played.streams} == {"video", "audio"}
        audio = next(stream for stream in played.streams if stream.type == "audio")
        assert audio.time_base is not None
        heard = float(sum(packet.duration or 0 for packet in played.demux(audio)) * audio.time_base)
        assert abs(heard - duration) < 0.5
    aac = await storage.local_path(completed.aac_storage_key)
    assert probe_media(aac).audio_codec == "aac"


async def test_the_live_playlist_comes_with_a_link_for_the_owner_it_was_told(
    media_stub: media_grpc.MediaServiceStub,
) -> None:
    """The gateway hands the first playable media out with no call of its own; without an owner, no link."""
    told = [r async for r in media_stub.NarrateLive(_requests("Breathe in. And out.", 2, owner="alice"))]
    untold = [r async for r in media_stub.NarrateLive(_requests("Breathe in. And out.", 2))]
    link = told[0].playlist_ready.owner_uri
    async with httpx.AsyncClient(timeout=10) as client:
        fetched = await client.get(link)
    assert fetched.status_code == 200 and fetched.text.startswith("#EXTM3U")
    # Made as SignAssetUris makes it, for that owner and no other.
    key = told[0].playlist_ready.storage_key
    signed = {
        owner: (
            await media_stub.SignAssetUris(media_pb.SignAssetUrisRequest(storage_keys=[key], owner=owner))
        ).uris[0]
        for owner in ("alice", "bob")
    }

    def owner_field(uri: str) -> str:  # the path's token, /media/expiry.owner.scope.signature/key
        return httpx.URL(uri).path.split("/")[2].split(".")[1]

    assert owner_field(link) == owner_field(signed["alice"]) != owner_field(signed["bob"])
    assert untold[0].playlist_ready.storage_key and untold[0].playlist_ready.owner_uri == ""


async def test_the_owners_link_to_the_live_playlist_costs_no_signing_request_of_its_own(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage signs the playlist in the request that signs its first segments (an empty playlist holds its
    place until then), so the link needs no request between the playlist's first version and the owner."""
    signed: list[list[str]] = []
    sign = storage.signed_uris

    async def recording(keys: Sequence[str]) -> list[str]:
        signed.append(list(keys))
        return await sign(keys)

    monkeypatch.setattr(storage, "signed_uris", recording)
    responses = [r async for r in media_stub.NarrateLive(_requests("Breathe in. And out.", 2, owner="alice"))]
    assert [r.WhichOneof("event") for r in responses] == ["playlist_ready", "completed"]
    key = responses[0].playlist_ready.storage_key
    assert [keys for keys in signed if key in keys] == [signed[0]]
    assert [name.rsplit(".", 1)[-1] for name in signed[0]] == ["mp4", "m4s", "m3u8"]
    async with httpx.AsyncClient(timeout=10) as client:
        fetched = await client.get(responses[0].playlist_ready.owner_uri)
    assert fetched.status_code == 200 and "#EXTINF" in fetched.text


async def test_the_quick_video_copies_the_live_aac_and_matches_the_narration(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage
) -> None:
    completed = [r async for r in media_stub.NarrateLive(_requests(SCRIPT, 5))][-1].completed
    picture = io.BytesIO()
    Image.new("RGB", (1792, 1024), (90, 120, 160)).save(picture, format="PNG")
    image = await storage.put_bytes("images/live.png", picture.getvalue(), "image/png")
    rendered = [
        r
        async for r in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(
                meditation=MEDITATION,
                image_storage_key=image.key,
                narration_storage_key=completed.storage_key,
                narration_aac_storage_key=completed.aac_storage_key,
                profile=media_pb.VIDEO_PROFILE_QUICK,
            )
        )
    ]
    info = probe_media(await storage.local_path(rendered[-1].uploaded.storage_key))
    duration = seconds_of(completed.duration)
    assert info.audio_codec == "aac"
    assert info.video_duration_seconds is not None and abs(info.video_duration_seconds - duration) < 0.5
    assert info.audio_duration_seconds is not None and abs(info.audio_duration_seconds - duration) < 0.5


async def test_the_narration_makes_the_quick_video_from_its_own_sound_as_it_ends(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage
) -> None:
    """The QUICK video comes with the narration, so the gateway asks for nothing more: the preview's picture
    and the narration's AAC, copied packet for packet, with the subtitles."""
    responses = [r async for r in media_stub.NarrateLive(_requests(SCRIPT, 5))]
    completed = responses[-1].completed
    assert completed.HasField("quick_video") and completed.HasField("quick_video_encoded")
    quick = completed.quick_video
    assert quick.storage_key.startswith(f"videos/{MEDITATION.split('/')[1]}/")
    assert quick.storage_key.endswith(".mp4")
    assert completed.quick_video_encoded.encoder == quick.encoder != ""
    path = await storage.local_path(quick.storage_key)
    assert path.stat().st_size == quick.size_bytes
    duration = seconds_of(completed.duration)
    assert seconds_of(quick.duration) == pytest.approx(duration, abs=0.1)
    assert (quick.width_pixels, quick.height_pixels) == (1280, 720)
    info = probe_media(path)
    assert (info.video_codec, info.audio_codec, info.height_pixels) == ("h264", "aac", 720)
    assert info.video_duration_seconds is not None and abs(info.video_duration_seconds - duration) < 0.5

    def audio_packets(file: Path) -> list[bytes]:
        with av.open(str(file)) as container:
            return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]

    # The sound is the narration's own, not encoded again: its packets, less their ADTS headers (7 bytes,
    # with no checksum), up to the narration's end (the encoder's last flush may fall past it).
    adts = audio_packets(await storage.local_path(completed.aac_storage_key))
    assert all(packet[:2] == b"\xff\xf1" for packet in adts)
    copied = audio_packets(path)
    assert len(adts) - 1 <= len(copied) <= len(adts)
    assert copied == [packet[7:] for packet in adts[: len(copied)]]
    with av.open(str(path)) as container:
        assert len(container.streams.subtitles) == 1
        quick_picture = Image.fromarray(next(container.decode(video=0)).to_ndarray(format="rgb24"))
    # The picture is the one the preview showed, so a player moving from one to the other sees no change.
    playlist = await storage.local_path(responses[0].playlist_ready.storage_key)
    with av.open(str(playlist), options={"allowed_extensions": "ALL"}) as preview:
        preview_picture = Image.fromarray(next(preview.decode(video=0)).to_ndarray(format="rgb24"))
    thumbnails = [
        np.asarray(picture.convert("RGB").resize((32, 18)), dtype=np.float64)
        for picture in (quick_picture, preview_picture)
    ]
    assert np.abs(thumbnails[0] - thumbnails[1]).mean() < 3


async def test_a_live_narration_without_start_is_invalid(media_stub: media_grpc.MediaServiceStub) -> None:
    async def requests() -> AsyncIterator[media_pb.NarrateLiveRequest]:
        yield media_pb.NarrateLiveRequest(text=media_pb.NarrateLiveText(text="Hello."))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in media_stub.NarrateLive(requests()):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_stream_that_ends_without_end_is_invalid_and_does_not_hang(
    media_stub: media_grpc.MediaServiceStub,
) -> None:
    async def requests() -> AsyncIterator[media_pb.NarrateLiveRequest]:
        yield media_pb.NarrateLiveRequest(start=media_pb.NarrateLiveStart(meditation=MEDITATION))
        yield media_pb.NarrateLiveRequest(text=media_pb.NarrateLiveText(text="Breathe in. And out. "))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in media_stub.NarrateLive(requests(), timeout=30):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end" in (raised.value.details() or "")


def _pieces(count: int) -> list[tuple[str, float]]:
    return [(f"segment-{index:05d}.m4s", 1.0) for index in range(count)]


def test_pieces_are_published_in_segments_that_double_and_wait_until_they_are_long_enough() -> None:
    published = _Published(pending=_pieces(10))
    groups = _group_pieces(published, publish_all=False)
    # 1 s, then 2 s, then 4 s; the three pieces left are short of the 8 s due next, so they wait.
    assert [len(group) for group in groups] == [1, 2, 4]
    assert [name for name, _ in published.pending] == [f"segment-{index:05d}.m4s" for index in range(7, 10)]
    published.segments = [("a", 1.0), ("b", 2.0), ("c", 4.0)]
    assert _group_pieces(published, publish_all=True) == [_pieces(10)[7:]]
    assert published.pending == []


def test_a_long_narration_is_published_in_segments_no_longer_than_the_longest() -> None:
    published = _Published(pending=_pieces(200))
    groups = _group_pieces(published, publish_all=True)
    assert sum(len(group) for group in groups) == 200
    assert max(len(group) for group in groups) == LONGEST_SEGMENT_SECONDS
    assert len(groups) <= 12


def test_a_player_about_to_run_dry_gets_what_is_cut_however_short() -> None:
    published = _Published(segments=[("a", 1.0), ("b", 2.0), ("c", 4.0)], playable_since=100.0)
    assert not published.is_running_dry(100.0)
    assert published.is_running_dry(100.0 + 7.0 - RUNNING_DRY_SECONDS + 0.1)


def test_past_the_first_segment_publishing_waits_until_a_player_has_little_left_to_play() -> None:
    assert _Published().wants_more(0.0)
    published = _Published(segments=[("a", 1.0), ("b", 2.0), ("c", 4.0), ("d", 8.0), ("e", 16.0)])
    published.playable_since = 100.0
    # 31 s published: a player that started at 100 s has 31 s ahead of it, then less as it plays.
    assert not published.wants_more(100.0)
    assert not published.wants_more(100.0 + 31.0 - PUBLISHED_AHEAD_SECONDS - 0.1)
    assert published.wants_more(100.0 + 31.0 - PUBLISHED_AHEAD_SECONDS + 0.1)


def test_pieces_left_waiting_fall_due_as_a_player_draws_near_the_end_of_what_is_published() -> None:
    # Nothing published yet (the first piece is due as soon as it is cut), or nothing waiting: no timer.
    assert _Published(pending=_pieces(1)).seconds_until_due(0.0) is None
    published = _Published(
        segments=[("a", 1.0), ("b", 2.0), ("c", 4.0), ("d", 8.0), ("e", 16.0)], playable_since=100.0
    )
    assert published.seconds_until_due(100.0) is None
    published.pending = _pieces(3)
    # 31 s published: publishing is wanted once a player that started at 100 s has 15 s left of it, and the
    # pieces go up however short once it has 4 s left.
    assert published.seconds_until_due(100.0) == pytest.approx(31.0 - PUBLISHED_AHEAD_SECONDS)
    assert published.seconds_until_due(120.0) == pytest.approx(31.0 - RUNNING_DRY_SECONDS - 20.0)
    assert published.seconds_until_due(130.0) is None


class _SigningRecorded(LocalAssetStorage):
    """Local storage that records what each signing request held."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.signed: list[list[str]] = []

    async def signed_uris(self, keys: Sequence[str]) -> list[str]:
        self.signed.append(list(keys))
        return await super().signed_uris(keys)


async def test_the_first_publication_signs_the_initialisation_and_first_segment_together(
    tmp_path: Path,
) -> None:
    """The first publication is on the way to first playable media: one signing request for the
    initialisation segment, the first segment and the playlist, and no wait for the later sentences."""
    storage = _SigningRecorded(tmp_path / "storage")
    rest_spoken = asyncio.Event()

    async def speak(sentences: Sequence[str]) -> list[SpokenSegment]:
        if sentences[0] != "Breathe in.":
            await rest_spoken.wait()
        return [SpokenSegment(Narration(bytes(2 * 24_000 * 2), 24_000), "openai", "") for _ in sentences]

    async with LiveNarration(
        meditation_id="0123456789abcdef", speak=speak, storage=storage, work_root=tmp_path
    ) as live:
        live.add_text("Breathe in. And out, slowly. Let the day go.")
        live.finish_script()
        events = live.events()
        async with asyncio.timeout(30):
            first = await anext(events)
        assert isinstance(first, PlaylistPublished)
        # The playlist is signed with them (its place held by an empty one), and lists a segment by the time
        # it is announced.
        assert [[key.rsplit(".", 1)[-1] for key in keys] for keys in storage.signed] == [
            ["mp4", "m4s", "m3u8"]
        ]
        playlist_path = await storage.local_path(first.storage_key)
        assert first.signed_uri == playlist_path.as_uri()
        assert "#EXTINF" in playlist_path.read_text()
        rest_spoken.set()
        async with asyncio.timeout(30):
            assert isinstance([event async for event in events][-1], LiveNarrationResult)


def _busy_encoder(monkeypatch: pytest.MonkeyPatch, free_writes: int = 0) -> threading.Event:
    """Holds the live encoders' writes after the first `free_writes` until the returned event is set (or
    30 s pass): an encoder busy with other jobs' work."""
    encoder_free = threading.Event()
    write = LiveEncoder.write
    writes = itertools.count()

    def busy_write(encoder: LiveEncoder, narration: Narration, *, is_last: bool) -> int:
        if next(writes) >= free_writes:
            encoder_free.wait(timeout=30)
        return write(encoder, narration, is_last=is_last)

    monkeypatch.setattr(LiveEncoder, "write", busy_write)
    return encoder_free


async def test_spoken_sentences_wait_for_the_encoder_on_disk_not_in_memory(
    storage: LocalAssetStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty jobs' speech comes back long before two cores can encode it: what waits is kept in the job's
    scratch folder, so a job holds no sentence's sound in memory while the encoder is busy."""
    seconds_of_sentence = {"Breathe in.": 1, "And out, slowly.": 2, "Let the day go.": 3}
    spoken: dict[int, weakref.ref[Narration]] = {}  # by length in seconds
    encoder_free = _busy_encoder(monkeypatch)

    async def speak(sentences: Sequence[str]) -> list[SpokenSegment]:
        segments = []
        for text in sentences:
            narration = Narration(bytes(2 * 24_000 * seconds_of_sentence[text]), 24_000)
            spoken[seconds_of_sentence[text]] = weakref.ref(narration)
            segments.append(SpokenSegment(narration, "openai", ""))
        return segments

    try:
        async with LiveNarration(
            meditation_id="0123456789abcdef",
            speak=speak,
            storage=storage,
            work_root=tmp_path,
            cpu_lane=CpuLane(2),
        ) as live:
            live.add_text(" ".join(seconds_of_sentence))
            live.finish_script()

            def all_let_go() -> bool:
                gc.collect()
                return len(spoken) == 3 and all(sound() is None for sound in spoken.values())

            # Every sentence is spoken while the encoder is still busy with the first.
            await wait_until(all_let_go, what="every sentence's sound to wait on disk")
            # The first may already be in the encoder's hands; the others wait in the scratch folder.
            waiting = {path.name for path in tmp_path.glob("live-*/sentence-*.pcm")}
            assert {"sentence-00001.pcm", "sentence-00002.pcm"} <= waiting
            encoder_free.set()
            async with asyncio.timeout(30):
                result = [event async for event in live.events()][-1]
            assert isinstance(result, LiveNarrationResult)
            assert [round(s.end_seconds - s.start_seconds) for s in result.sentences] == [1, 2, 3]
            # Each is removed once encoded.
            assert not list(tmp_path.glob("live-*/sentence-*.pcm"))
    finally:
        encoder_free.set()


class _TurnsRecorded(CpuLane):
    """A CPU lane that records what each of its turns ran, once it has run (a mastering turn recorded as it
    began let the test free the encoder before the sound it masters was ready)."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.turns: list[tuple[str, tuple[Any, ...]]] = []

    async def run(self, function: Any, /, *args: Any, **kwargs: Any) -> Any:
        result = await super().run(function, *args, **kwargs)
        self.turns.append((getattr(function, "__name__", ""), args))
        return result


async def test_sentences_spoken_while_the_encoder_was_busy_are_encoded_in_one_turn_of_the_cpu_lane(
    storage: LocalAssetStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty jobs share the lane: a job's narration a sentence per turn was spread among everyone's work,
    and its preview published in as many small pieces. The first sentence is encoded at once (urgent work,
    which the background waits for); the encoder is then held on the second while the rest are spoken."""
    encoder_free = _busy_encoder(monkeypatch, free_writes=1)
    spoken: list[str] = []

    async def speak(sentences: Sequence[str]) -> list[SpokenSegment]:
        spoken.extend(sentences)
        return [SpokenSegment(Narration(bytes(2 * 24_000), 24_000), "openai", "") for _ in sentences]

    lane = _TurnsRecorded(2)
    script = ["Breathe in.", "And out.", "Again, slowly.", "Let it go."]
    try:
        async with LiveNarration(
            meditation_id="0123456789abcdef", speak=speak, storage=storage, work_root=tmp_path, cpu_lane=lane
        ) as live:
            live.add_text(" ".join(script))
            live.finish_script()

            def all_set_aside() -> bool:
                return len(spoken) == 4 and len(list(tmp_path.glob("live-*/sentence-*.pcm"))) >= 2

            # The second is in the encoder's hands (held), the third and fourth wait on disk.
            await wait_until(all_set_aside, what="every sentence to be spoken and set aside")
            encoder_free.set()
            async with asyncio.timeout(30):
                result = [event async for event in live.events()][-1]
    finally:
        encoder_free.set()
    assert isinstance(result, LiveNarrationResult)
    assert [sentence.text for sentence in result.sentences] == script
    # The first sentence alone (a listener waits for it); the one the encoder was held on; then every
    # sentence spoken meanwhile in one turn (a turn each was four).
    encoded = [len(args[0]) for name, args in lane.turns if name == "write_all"]
    assert encoded[0] == 1 and sum(encoded) == 4 and len(encoded) <= 3, encoded


class _UrgencyRecorded(CpuLane):
    """A CPU lane that records, for each turn, its function's name, whether it was urgent, and in how many
    seconds a listener needs it (None: nobody in particular)."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.turns: list[tuple[str, bool, float | None]] = []

    async def run(self, function: Any, /, *args: Any, **kwargs: Any) -> Any:
        moment = due_at()
        self.turns.append(
            (
                getattr(function, "__name__", ""),
                is_urgent(),
                None if moment is None else moment - time.monotonic(),
            )
        )
        return await super().run(function, *args, **kwargs)


async def test_what_a_listener_reaches_soon_is_encoded_as_due_work_and_the_rest_in_the_background(
    storage: LocalAssetStorage, tmp_path: Path
) -> None:
    """The first sentence is urgent; the next one, heard a second later, is due (encoded at the process's
    priority, ahead of other jobs' background work); the one after a long pause is beyond the horizon, so
    it is background work even when its sound is ready in the same turn."""

    async def speak(sentences: Sequence[str]) -> list[SpokenSegment]:
        return [
            SpokenSegment(
                Narration(bytes(2 * round(24_000 * (1 + total_pause_seconds(text)))), 24_000), "openai", ""
            )
            for text in sentences
        ]

    lane = _UrgencyRecorded(2)
    script = ["Breathe in.", f"And out. {_FAR_OFF}", "Let it go."]
    try:
        async with LiveNarration(
            meditation_id="0123456789abcdef", speak=speak, storage=storage, work_root=tmp_path, cpu_lane=lane
        ) as live:
            live.add_text(" ".join(script))
            live.finish_script()
            async with asyncio.timeout(30):
                result = [event async for event in live.events()][-1]
    finally:
        lane.shutdown()
    assert isinstance(result, LiveNarrationResult)
    assert [sentence.text for sentence in result.sentences] == script
    encoded = [(is_urgent, due) for name, is_urgent, due in lane.turns if name == "write_all"]
    assert len(encoded) == 3, encoded
    (first_urgent, first_due), (next_urgent, next_due), (last_urgent, last_due) = encoded
    assert first_urgent and first_due is None
    assert not next_urgent and next_due is not None and next_due <= DUE_HORIZON_SECONDS
    # Heard 50 s into the narration: beyond the horizon, though spoken long before.
    assert not last_urgent and last_due is not None and last_due > DUE_HORIZON_SECONDS


def test_a_due_turn_takes_the_sounds_a_listener_reaches_within_the_horizon() -> None:
    def sound(seconds: float) -> WaitingSound:
        return WaitingSound(sample_rate_hertz=24_000, samples=round(24_000 * seconds))

    horizon = DUE_HORIZON_SECONDS
    sounds = [sound(horizon / 4), sound(horizon / 2), sound(horizon / 5), sound(3)]
    # Heard in 3 s: the next start 0.25, 0.75 and 0.95 of the horizon after that, the last beyond it.
    assert _heard_within_horizon(sounds, 3.0) == sounds[:3]
    # A listener already waiting (due in the past) gets more of it.
    assert _heard_within_horizon(sounds, -5.0) == sounds
    # The first always, however long it is.
    long = sound(horizon * 3)
    assert _heard_within_horizon([long, sound(1)], 0.0) == [long]
    # Beyond the horizon from the start: background work, all of it in one turn.
    assert _heard_within_horizon(sounds, DUE_HORIZON_SECONDS + 1) == sounds


def test_joined_pieces_keep_every_fragment_and_one_segment_type(tmp_path: Path) -> None:
    def box(kind: bytes, payload: bytes) -> bytes:
        return (8 + len(payload)).to_bytes(4, "big") + kind + payload

    for index in range(2):
        (tmp_path / f"{index}.m4s").write_bytes(
            box(b"styp", b"msdh")
            + box(b"sidx", b"x" * 4)
            + box(b"moof", bytes([index]))
            + box(b"mdat", b"yy")
        )
    joined = _joined_pieces([tmp_path / "0.m4s", tmp_path / "1.m4s"])
    assert joined == (
        box(b"styp", b"msdh")
        + box(b"moof", b"\x00")
        + box(b"mdat", b"yy")
        + box(b"moof", b"\x01")
        + box(b"mdat", b"yy")
    )
    (tmp_path / "bad.m4s").write_bytes(b"\x00\x00\x00\x40moof")
    with pytest.raises(Exception, match="malformed"):
        _joined_pieces([tmp_path / "bad.m4s"])


async def test_a_remote_voice_hears_the_first_sentence_alone_then_groups_of_whole_sentences(
    storage: LocalAssetStorage, tmp_path: Path
) -> None:
    espeak = EspeakNarrator(words_per_minute=375)
    requests: list[list[str]] = []

    async def speak(sentences: Sequence[str]) -> list[SpokenSegment]:
        # Each request takes a moment, as a remote voice does (a few tenths of a second), so sentences gather
        # while it is out.
        requests.append(list(sentences))
        await asyncio.sleep(0.1)
        return [SpokenSegment(await espeak.narrate(sentence), "openai", "") for sentence in sentences]

    sentences = [f"Sentence {index} is calm and slow, breathing in and out softly." for index in range(40)]
    # Two of them fit in a group, three do not: the first alone, then pairs.
    assert 2 * max(map(len, sentences)) <= GROUP_CHARACTERS < 3 * min(map(len, sentences))
    script = " ".join(sentences)
    try:
        async with LiveNarration(
            meditation_id="0123456789abcdef",
            speak=speak,
            storage=storage,
            work_root=tmp_path,
            max_requests_in_flight=3,
            groups_sentences=True,
        ) as live:
            for start in range(0, len(script), 40):
                live.add_text(script[start : start + 40])
                await asyncio.sleep(0.01)
            live.finish_script()
            result = [event async for event in live.events()][-1]
    finally:
        espeak.close()
    assert isinstance(result, LiveNarrationResult)
    assert requests[0] == [sentences[0]]
    # Every sentence spoken once, in order, in about half as many requests as sentences.
    assert [sentence for request in requests for sentence in request] == [s.text for s in result.sentences]
    assert len(result.sentences) == 40
    assert len(requests) <= 1 + 20, [len(request) for request in requests]
    # None longer than a group holds, which bounds what the QUICK video waits for at the end.
    assert all(len(request) == 1 or sum(map(len, request)) <= GROUP_CHARACTERS for request in requests), [
        sum(map(len, request)) for request in requests
    ]


# Four pauses of the longest a mark holds: what follows is heard beyond urgency.DUE_HORIZON_SECONDS.
_FAR_OFF = "[pause 12s] [pause 12s] [pause 12s] [pause 12s]"


async def _spoken_in_turn(storage: LocalAssetStorage, tmp_path: Path, scripts: dict[str, str]) -> list[str]:
    """The jobs named in `scripts` (in the order they arrived) share one speech slot, one sentence a request:
    the order their sentences were spoken in, as `job: sentence`. The last job's script comes first, and its
    first request holds the slot until every other request waits for it."""
    slot = PriorityLimiter(1)
    spoken: list[str] = []
    everyone_waiting = asyncio.Event()

    def speaker(job: str) -> SpeakSentences:
        async def speak(sentences: Sequence[str]) -> list[SpokenSegment]:
            async with slot:
                await everyone_waiting.wait()
                await asyncio.sleep(0.01)  # a remote voice takes a moment
                spoken.extend(f"{job}: {sentence}" for sentence in sentences)
            return [SpokenSegment(Narration(bytes(2 * 2400), 24_000), "openai", "") for _ in sentences]

        return speak

    narrations = {
        job: LiveNarration(
            meditation_id=f"{job}0123456789abcdef",
            speak=speaker(job),
            storage=storage,
            work_root=tmp_path,
            max_requests_in_flight=3,
        )
        for job in scripts
    }
    async with contextlib.AsyncExitStack() as stack:
        for live in reversed(narrations.values()):
            await stack.enter_async_context(live)
        for job in reversed(scripts):
            narrations[job].add_text(scripts[job])
            narrations[job].finish_script()
        # Each job's first three requests wait (the last job's first one holds the slot) before it frees.
        expected = 3 * len(scripts) - 1
        await wait_until(lambda: slot.waiting == expected, what=f"{expected} requests waiting for the slot")
        everyone_waiting.set()
        for live in narrations.values():
            assert isinstance([event async for event in live.events()][-1], LiveNarrationResult)
    return spoken


async def test_past_their_first_sentences_the_job_that_arrived_first_is_spoken_first(
    storage: LocalAssetStorage, tmp_path: Path
) -> None:
    """Both first sentences go first, then, of what no listener will reach soon, all of the earlier job's,
    so it finishes instead of both finishing late together."""
    sentences = [f"Sentence 0. {_FAR_OFF}", *(f"Sentence {index}." for index in range(1, 5))]
    script = " ".join(sentences)
    spoken = await _spoken_in_turn(storage, tmp_path, {"a": script, "b": script})
    assert spoken == [
        f"b: {sentences[0]}",
        f"a: {sentences[0]}",
        *(f"a: {sentence}" for sentence in sentences[1:]),
        *(f"b: {sentence}" for sentence in sentences[1:]),
    ]


async def test_a_listener_about_to_hear_the_next_sentences_goes_ahead_of_an_earlier_job(
    storage: LocalAssetStorage, tmp_path: Path
) -> None:
    """The later job's next sentences will be heard in seconds, the earlier job's only after a long pause:
    the later job's go first, or its listener would hear one sentence and then wait for the whole of the
    earlier job's narration."""
    far_off = [f"Sentence 0. {_FAR_OFF}", *(f"Sentence {index}." for index in range(1, 5))]
    soon = [f"Sentence {index}." for index in range(5)]
    spoken = await _spoken_in_turn(storage, tmp_path, {"a": " ".join(far_off), "b": " ".join(soon)})
    assert spoken == [
        f"b: {soon[0]}",
        f"a: {far_off[0]}",
        *(f"b: {sentence}" for sentence in soon[1:]),
        *(f"a: {sentence}" for sentence in far_off[1:]),
    ]


def test_the_bed_rises_over_the_fade_holds_and_falls_away_over_the_last_sentence() -> None:
    rate = 1000
    fade = round(4.0 * rate)  # ENHANCED_PROFILE's four seconds
    # One narration cut into sentences at arbitrary points: the envelope must not jump between them.
    cuts = [0, 1500, 4100, 9000, 12_000]
    pieces = [
        bed_envelope(start, end - start, rate, is_last=end == cuts[-1])
        for start, end in itertools.pairwise(cuts)
    ]
    whole = np.concatenate(pieces)

    assert whole[0] == 0.0
    assert np.all(np.diff(whole[:fade]) > 0)
    assert np.all(whole[fade:9000] == 1.0)
    assert np.all(np.diff(whole[9000:]) < 0)
    assert whole[-1] < 0.01
    # No step anywhere: the steepest is the fall over the three-second last sentence.
    assert np.max(np.abs(np.diff(whole))) < 2 / 3000
