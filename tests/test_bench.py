"""The benchmark's parts that can go wrong: percentiles, the report, the reference encode, the encodes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.__main__ import parse_settings
from bench.conversations import conversation_for
from bench.jobs import MILESTONES, JobTimeline, StageSpan
from bench.percentiles import percentile, summarize
from bench.reference_pipeline import reference_encode_command
from bench.report import build_targets, pipeline_section, render_markdown, write_report
from tests.servers.supabase_storage import SupabaseStorageServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.5, 0.9, 0.95, 1.0])
@pytest.mark.parametrize(
    "values", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0], [0.1 * i for i in range(20)]]
)
def test_percentile_interpolates_between_ranks_like_numpy(values: list[float], fraction: float) -> None:
    assert percentile(values, fraction) == pytest.approx(float(np.percentile(values, fraction * 100)))


def test_percentile_refuses_nothing_and_fractions_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        percentile([1.0], 95)
    with pytest.raises(ValueError, match="finite"):
        percentile([1.0, float("nan")], 0.5)


def test_summary_counts_jobs_that_never_reached_a_milestone() -> None:
    summary = summarize([1.0, None, 3.0])
    assert (summary["p50"], summary["count"], summary["missing"]) == (2.0, 2, 1)
    assert summarize([None])["p95"] is None


def test_the_reference_encode_is_the_reference_pipelines_command_as_written(tmp_path: Path) -> None:
    command = reference_encode_command(
        "ffmpeg", tmp_path / "image.png", tmp_path / "speech.mp3", tmp_path / "out.mp4"
    )
    joined = " ".join(command)
    first_input = command.index("-i")
    assert command[command.index("-hwaccel") + 1] == "auto" and command.index("-hwaccel") < first_input
    assert command[first_input - 2 : first_input + 2] == ["-loop", "1", "-i", str(tmp_path / "image.png")]
    assert f"-i {tmp_path / 'speech.mp3'}" in joined
    for setting in (
        "-c:v libx264",
        "-preset ultrafast",
        "-crf 28",
        "-c:a aac",
        "-b:a 96k",
        "-threads 0",
        "-movflags +faststart",
    ):
        assert setting in joined, setting
    assert "-shortest" in command
    # As written: none of Stillpoint's fixes (a duration, 4:2:0 chroma) sneak in.
    assert "-t" not in command and "-pix_fmt" not in command
    assert command[-1] == str(tmp_path / "out.mp4")


def _job(pipeline: str, index: int, offset: float, *, playable: float | None) -> JobTimeline:
    job = JobTimeline(pipeline=pipeline, index=index, succeeded=True)
    job.milestones = {
        "first_event": 0.02 + offset,
        "first_playable": playable,
        "quick_video": 8.0 + offset,
        "enhanced_video": 12.0 + offset,
        "completed": 12.5 + offset,
    }
    job.first_playable_kind = "playlist_ready" if playable is not None else None
    job.stages = [
        StageSpan("source", 0.0, 0.1 + offset),
        StageSpan("transcript", 0.1, 4.0 + offset),
        StageSpan("image", 0.1, 10.0 + offset),
        StageSpan("narration", 0.2, 7.0 + offset),
        StageSpan("upload", 8.0, 9.0 + offset),
    ]
    return job


def _report() -> tuple[dict[str, Any], list[tuple[str, list[JobTimeline]]]]:
    reference = [_job("reference", index, index * 1.5, playable=30.0 + index) for index in range(3)]
    stillpoint = [_job("stillpoint", index, index * 0.5, playable=2.0 + index) for index in range(4)]
    encode = {
        "inputs": {"image": "1024x1024 PNG", "narration_seconds": 200.0},
        "repetitions": 3,
        "audio_copy_supported": False,
        "commands": {
            "reference": {"wall_seconds": 50.0, "cpu_seconds": 99.0, "ssim": 0.9946, "size_bytes": 4_000_000},
            "stillpoint_quick_from_wav": {"wall_seconds": 0.5, "cpu_seconds": 0.6, "ssim": 0.995},
            "stillpoint_enhanced_from_wav": {"wall_seconds": 1.0, "cpu_seconds": 1.1, "ssim": 0.996},
            "stillpoint_quick_from_aac": {"supported": False, "note": "no stream copy"},
        },
        "speedup_over_reference": {
            "stillpoint_quick_from_wav": 100.0,
            "stillpoint_enhanced_from_wav": 50.0,
            "stillpoint_quick_from_aac": None,
        },
    }
    fifty = pipeline_section(stillpoint, cpu_seconds=8.0, peak_rss_bytes=1_600_000_000, wall_seconds=30.0)
    report: dict[str, Any] = {
        "generated_at": "2026-11-21T00:00:00+00:00",
        "settings": {"jobs": 4, "reference_jobs": 3, "quick": False},
        "reference": pipeline_section(
            reference, cpu_seconds=300.0, peak_rss_bytes=300_000_000, wall_seconds=100.0
        ),
        "stillpoint": pipeline_section(
            stillpoint, cpu_seconds=6.0, peak_rss_bytes=500_000_000, wall_seconds=60.0
        ),
        "encode": encode,
        "concurrency": {"50": fifty},
        "environment": {"logical_cpus": 2},
    }
    report["targets"] = [target.to_json_object() for target in build_targets(encode, report["concurrency"])]
    return report, [("Reference pipeline", reference), ("Stillpoint", stillpoint)]


def test_report_writes_stable_json_a_markdown_table_and_a_timeline_png(tmp_path: Path) -> None:
    report, sections = _report()
    write_report(report, sections, tmp_path)

    written = json.loads((tmp_path / "report.json").read_text())
    for pipeline in ("reference", "stillpoint"):
        for milestone in MILESTONES:
            assert set(written[pipeline][f"{milestone}_seconds"]) >= {"p50", "p95"}
        assert {"cpu_seconds_per_job", "peak_rss_bytes", "timelines"} <= set(written[pipeline])
    assert written["stillpoint"]["first_playable_seconds"]["p50"] == pytest.approx(3.5)
    assert written["reference"]["cpu_seconds_per_job"] == pytest.approx(100.0)
    assert {"encode", "concurrency", "targets", "environment"} <= set(written)
    targets = {target["name"]: target for target in written["targets"]}
    assert all({"name", "target", "measured", "met"} <= set(target) for target in targets.values())
    assert targets["encode: QUICK render from WAV vs the reference encode"]["met"] is True
    assert targets["encode: QUICK render from already-AAC narration vs the reference encode"]["met"] is None
    assert targets["50 concurrent jobs on 2 cores: p95 first playable"]["met"] is True
    peak = targets["50 concurrent jobs: peak RSS of all services"]
    assert peak["met"] is False and peak["measured"] == pytest.approx(1.6)

    markdown = (tmp_path / "report.md").read_text()
    assert (
        "| milestone | reference p50 | reference p95 | Stillpoint p50 | Stillpoint p95 | p50 speed-up |"
        in markdown
    )
    assert "| first playable media | 31.00 s |" in markdown
    assert "**missed**, by 0.10 GB (7 %)" in markdown
    assert "met, by 40.00× (67 %)" in markdown

    with Image.open(tmp_path / "timelines.png") as image:
        image.verify()
    with Image.open(tmp_path / "timelines.png") as image:
        assert image.format == "PNG" and image.width >= 1000 and image.height > 200
        image.load()


def test_markdown_says_not_measured_when_a_phase_did_not_run() -> None:
    targets = [target.to_json_object() for target in build_targets(None, {})]
    markdown = render_markdown({"settings": {}, "targets": targets})
    assert markdown.count("not measured") == 2 * len(targets)


def test_every_job_gets_a_distinct_conversation() -> None:
    texts = {" ".join(turn.text for turn in conversation_for(index)) for index in range(100)}
    assert len(texts) == 100


def test_jobs_default_to_twenty_for_stillpoint_and_at_most_three_for_the_slow_reference_pipeline() -> None:
    assert (parse_settings([]).jobs, parse_settings([]).reference_jobs) == (20, 3)
    settings = parse_settings(["--jobs", "2", "--concurrency", "1,5"])
    assert (settings.jobs, settings.reference_jobs, settings.concurrency_levels) == (2, 2, (1, 5))
    assert parse_settings(["--jobs", "20", "--reference-jobs", "20"]).reference_jobs == 20
    assert parse_settings(["--upload-per-object"]).latency_model.upload_scale_by_bytes is None
    quick = parse_settings(["--quick", "--phases", "encode"])
    assert quick.is_quick and quick.phases == ("encode",) and quick.encode_repetitions == 1


def _post(url: str, body: bytes, content_type: str, key: str) -> None:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _upload_seconds(server: SupabaseStorageServer, name: str) -> float:
    started = time.perf_counter()
    _post(f"{server.url}/storage/v1/object/bench/{name}", b"\0" * 1000, "video/mp4", "k")
    return time.perf_counter() - started


def test_supabase_server_delays_uploads_only_when_asked(tmp_path: Path) -> None:
    with (
        SupabaseStorageServer(tmp_path / "slow", "k", upload_latency=(0.3, 0.3)) as slow,
        SupabaseStorageServer(tmp_path / "fast", "k") as fast,
    ):
        for server in (slow, fast):
            _post(
                f"{server.url}/storage/v1/bucket",
                json.dumps({"id": "bench"}).encode(),
                "application/json",
                "k",
            )
        assert _upload_seconds(slow, "a.mp4") >= 0.3
        assert _upload_seconds(fast, "a.mp4") < 0.3


def test_quick_encode_comparison_reports_ssim_for_every_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--phases", "encode", "--output-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    commands = report["encode"]["commands"]
    measured = {name: entry for name, entry in commands.items() if entry.get("supported", True)}
    assert {"reference", "stillpoint_quick_from_wav", "stillpoint_enhanced_from_wav"} <= set(measured)
    for name, entry in measured.items():
        assert 0.0 < entry["ssim"] <= 1.0, name
        assert 0.0 < entry["ssim_all_planes_444"] <= 1.0, name
        assert entry["wall_seconds"] > 0, name
    assert (
        commands["reference"]["pixel_format"] == "yuv444p"
    )  # the reference encode keeps 4:4:4, as measured before
    assert report["encode"]["speedup_over_reference"]["stillpoint_quick_from_wav"] > 1
    assert (tmp_path / "report.md").exists() and (tmp_path / "timelines.png").exists()
