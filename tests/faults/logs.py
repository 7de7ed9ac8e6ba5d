"""What a fault test asserts once the dust settles: one whole event log, one outcome, one set of videos."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb

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
