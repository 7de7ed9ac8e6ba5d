"""The narration bench measures everything it names; what the numbers are is not a test's business."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.narration import main


@pytest.mark.timeout(180)
def test_the_command_reports_the_voice_speed_and_the_live_preview_latency(tmp_path: Path) -> None:
    assert main(["--live-runs", "1", "--sentences", "3", "--output-dir", str(tmp_path)]) == 0

    report = json.loads((tmp_path / "narration.json").read_text())
    assert report["voice"] == "en_US-joe-medium"
    assert report["sentences"] == 3
    assert report["voice_load_seconds"] > 0
    assert 0 < report["one_at_a_time"]["real_time_factor"] < 5
    assert 0 < report["two_at_a_time"]["real_time_factor"] < 5
    live = report["live_preview"]
    for name in ("first_sentence_spoken_seconds", "playlist_ready_seconds", "narration_completed_seconds"):
        assert live[name]["count"] == 1, name
        assert live[name]["p50"] > 0, name
    assert live["first_sentence_spoken_seconds"]["p50"] <= live["playlist_ready_seconds"]["p50"]
    assert "real-time factor" in (tmp_path / "narration.md").read_text()
