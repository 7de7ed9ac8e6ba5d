"""What a fault test asserts once the dust settles: one whole event log, one outcome, one set of videos."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from tests.asset_fetch import asset_named

Response = gateway_pb.GenerateMeditationResponse | gateway_pb.WatchMeditationResponse


def assert_one_whole_log(*parts: Sequence[Response]) -> None:
    """The parts, read one after another (a stream, then a watch resuming it), make one job's log:
    sequences 1..n with no gap or duplicate, accepted once, completed once and last, SUCCEEDED, with an
    ENHANCED video."""
    responses = [response for part in parts for response in part]
    sequences = [response.sequence for response in responses]
    assert sequences == list(range(1, len(sequences) + 1)), "a gap or a duplicate in the event log"
    kinds = [response.WhichOneof("event") for response in responses]
    assert kinds.count("accepted") == 1
    assert kinds.count("completed") == 1
    assert kinds[-1] == "completed"
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    qualities = [response.video_ready.quality for response in responses if response.HasField("video_ready")]
    assert gateway_pb.VIDEO_QUALITY_ENHANCED in qualities


def stored_videos(var_root: Path, meditation: str) -> list[Path]:
    """The videos local storage holds for a meditation (`meditations/<id>`)."""
    meditation_id = meditation.rsplit("/", 1)[1]
    return sorted((var_root / "storage" / "videos" / meditation_id).glob("*.mp4"))


def same_log(streamed: Sequence[Response], replayed: Sequence[Response]) -> None:
    """A replay is the log the stream showed, event for event. Asset URIs are made when read, so an asset an
    earlier attempt made and a later one replaced (its live preview) has no URI in the replay: every other
    URI leads to the same asset (a link minted later, with its own expiry), and everything but URIs is
    identical."""
    assert len(streamed) == len(replayed)
    for shown, stored in zip(streamed, replayed, strict=True):
        shown_uri, stored_uri = _asset_uri(shown), _asset_uri(stored)
        assert stored_uri == "" or asset_named(stored_uri) == asset_named(shown_uri), (shown, stored)
        assert _without_uri(shown) == _without_uri(stored)


_ASSET_EVENTS = ("image_ready", "narration_ready", "playlist_ready", "video_ready")


def _asset_uri(response: Response) -> str:
    kind = response.WhichOneof("event")
    return str(getattr(response, kind).uri) if kind in _ASSET_EVENTS else ""


def _without_uri(response: Response) -> bytes:
    copy = gateway_pb.GenerateMeditationResponse.FromString(response.SerializeToString())
    kind = copy.WhichOneof("event")
    if kind in _ASSET_EVENTS:
        event = getattr(copy, kind)
        event.ClearField("uri")
        # The subtitles beside a narration or video: the same file, by a link minted when read.
        if kind in ("narration_ready", "video_ready") and event.subtitles_uri:
            event.subtitles_uri = asset_named(event.subtitles_uri)
    return copy.SerializeToString(deterministic=True)
