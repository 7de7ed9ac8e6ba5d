"""The bench's live preview continuity: the simulated player's stalls, and where the playlists come from."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench.continuity import (
    Continuity,
    PlaylistVersion,
    describe_playlist,
    playlist_versions_of,
    simulate_playback,
)
from bench.jobs import JobTimeline
from bench.providers import ProviderServers
from bench.report import preview_section, render_markdown
from tests.test_bench import post_to_storage, running_bench_storage_server

ROOT = Path(__file__).resolve().parent.parent
# Far past every version in the cases below: only a playlist that never ends waits until then.
OBSERVED_UNTIL = 100.0


def _versions(*versions: tuple[float, float, bool]) -> list[PlaylistVersion]:
    return [PlaylistVersion(written, duration, is_final) for written, duration, is_final in versions]


def _stalls(continuity: Continuity) -> tuple[float, int, float, bool]:
    """Total, count, longest and whether it ended, the seconds rounded past the floats' sums' noise."""
    return (
        round(continuity.stall_seconds, 9),
        continuity.stall_count,
        round(continuity.longest_stall_seconds, 9),
        continuity.has_ended,
    )


def test_a_playlist_that_grows_ahead_of_the_player_never_stalls() -> None:
    # Has 2 s at 0.5 (dry at 2.5); 4 s from 1 (dry at 4.5); 6 s, final, from 3: ends at 6.5.
    versions = _versions((0.0, 2.0, False), (1.0, 4.0, False), (3.0, 6.0, True))
    assert _stalls(simulate_playback(0.5, versions, OBSERVED_UNTIL)) == (0.0, 0, 0.0, True)


def test_a_player_waits_from_the_end_of_what_it_has_until_the_next_version() -> None:
    # Plays 1 s, waits from 1 to 3, then plays the remaining 3 s.
    versions = _versions((0.0, 1.0, False), (3.0, 4.0, True))
    assert _stalls(simulate_playback(0.0, versions, OBSERVED_UNTIL)) == (2.0, 1, 2.0, True)


def test_each_separate_wait_counts_as_a_stall() -> None:
    # Dry at 1 (waits 1 s to 2), at 3 (waits 2 s to 5), at 7 (waits 1 s to 8); ends at 9.
    versions = _versions((0.0, 1.0, False), (2.0, 2.0, False), (5.0, 4.0, False), (8.0, 5.0, True))
    assert _stalls(simulate_playback(0.0, versions, OBSERVED_UNTIL)) == (4.0, 3, 2.0, True)


def test_versions_written_before_first_playable_are_there_when_the_player_starts() -> None:
    everything = _versions((0.0, 1.0, False), (1.0, 3.0, False), (2.0, 6.0, True))
    assert _stalls(simulate_playback(10.0, everything, OBSERVED_UNTIL)) == (0.0, 0, 0.0, True)
    # Starts at 2 with 2 s, dry at 4, waits until 6 for the rest.
    partly = _versions((0.0, 1.0, False), (1.0, 2.0, False), (6.0, 4.0, True))
    assert _stalls(simulate_playback(2.0, partly, OBSERVED_UNTIL)) == (2.0, 1, 2.0, True)


def test_first_playable_before_any_version_waits_for_the_first_one() -> None:
    # Nothing until 1.5; then 2 s, and from 2 (0.5 s played) 3 s final: ends at 4.5 without another wait.
    versions = _versions((1.5, 2.0, False), (2.0, 3.0, True))
    assert _stalls(simulate_playback(0.0, versions, OBSERVED_UNTIL)) == (1.5, 1, 1.5, True)


def test_a_playlist_that_never_ends_stalls_until_the_end_of_the_observation() -> None:
    # Dry at 1 (waits to 2), dry again at 3 and nothing more: waits until 10, unended.
    versions = _versions((0.0, 1.0, False), (2.0, 2.0, False))
    assert _stalls(simulate_playback(0.0, versions, 10.0)) == (8.0, 2, 7.0, False)
    assert _stalls(simulate_playback(5.0, [], 9.0)) == (4.0, 1, 4.0, False)


def test_a_version_that_comes_just_as_the_player_runs_dry_is_no_stall() -> None:
    versions = _versions((0.0, 1.0, False), (1.0, 2.0, True))
    assert _stalls(simulate_playback(0.0, versions, OBSERVED_UNTIL)) == (0.0, 0, 0.0, True)


def test_versions_are_taken_in_the_order_they_were_written_not_as_given() -> None:
    versions = _versions((3.0, 4.0, True), (0.0, 1.0, False))
    assert _stalls(simulate_playback(0.0, versions, OBSERVED_UNTIL)) == (2.0, 1, 2.0, True)


def test_a_version_listing_less_takes_nothing_from_the_player() -> None:
    # The 1 s version at 1 (never expected) leaves the 3 s the player already knew of.
    versions = _versions((0.0, 3.0, False), (1.0, 1.0, False), (3.0, 4.0, True))
    assert _stalls(simulate_playback(0.0, versions, OBSERVED_UNTIL)) == (0.0, 0, 0.0, True)


def test_a_playlists_duration_is_the_sum_of_its_segments_and_it_ends_with_endlist() -> None:
    growing = '#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXT-X-MAP:URI="init.mp4"\n#EXTINF:1.000,\na.m4s\n'
    assert describe_playlist(growing) == (1.0, False)
    final = growing + "#EXTINF:2.5,\nb.m4s\n#EXTINF:0.25,\nc.m4s\n#EXT-X-ENDLIST\n"
    # Exact: each of these is a binary fraction.
    assert describe_playlist(final) == (3.75, True)
    assert describe_playlist("") == (0.0, False)


def test_a_meditations_playlist_is_the_first_one_written_in_its_live_folder() -> None:
    first, retried = _versions((2.0, 1.0, False), (1.0, 0.5, False)), _versions((5.0, 1.0, False))
    history = {
        "live/0123456789abcdef/aa.m3u8": first,
        "live/0123456789abcdef/bb.m3u8": retried,
        "live/0123456789abcdef/init.mp4": _versions((0.0, 0.0, False)),
        "live/fedcba9876543210/cc.m3u8": _versions((0.5, 9.0, True)),
    }
    assert playlist_versions_of(history, "meditations/0123456789abcdef") == sorted(
        first, key=lambda version: version.written_seconds
    )
    assert playlist_versions_of(history, "meditations/00000000000000ff") == []
    assert playlist_versions_of(history, "") == []


def _job(index: int, continuity: Continuity | None) -> JobTimeline:
    return JobTimeline(pipeline="stillpoint", index=index, preview_continuity=continuity)


def test_a_levels_preview_figures_leave_out_jobs_whose_playlist_never_ended() -> None:
    jobs = [
        _job(0, Continuity(0.0, 0, 0.0, has_ended=True)),
        _job(1, Continuity(0.4, 2, 0.3, has_ended=True)),
        _job(2, Continuity(3.0, 2, 2.0, has_ended=True)),
        _job(3, Continuity(50.0, 1, 50.0, has_ended=False)),
        _job(4, None),
    ]
    figures = preview_section(jobs)
    stall = figures["preview_stall_seconds"]
    assert (stall["count"], stall["missing"], stall["max"]) == (3, 2, pytest.approx(3.0))
    assert stall["p50"] == pytest.approx(0.4)
    assert figures["preview_longest_stall_seconds"]["max"] == pytest.approx(2.0)
    assert (figures["preview_stalled_jobs"], figures["preview_unended_jobs"]) == (1, 1)

    markdown = render_markdown({"settings": {}, "levels": {"3": {"jobs": 5, **figures}}})
    assert "| jobs at once | jobs that stalled > 0.5 s in all | total stall p50 / p95 / max |" in markdown
    assert "| 3 | 1/3 | 0.40 / 2.74 / 3.00 | 2.00 | 2 | 1 |" in markdown


@pytest.mark.timeout(30)
def test_the_bench_storage_server_answers_every_version_of_every_playlist(tmp_path: Path) -> None:
    with running_bench_storage_server(tmp_path) as (process, url):
        servers = ProviderServers(openai_base_url="", supabase_url=url, pids=(), storage_process=process)
        post_to_storage(f"{url}/storage/v1/bucket", json.dumps({"id": "bench"}).encode(), "application/json")
        playlist = f"{url}/storage/v1/object/bench/live/0123456789abcdef/aa.m3u8"
        before = time.monotonic()
        post_to_storage(playlist, b"#EXTM3U\n#EXTINF:1.0,\na.m4s\n", "application/vnd.apple.mpegurl")
        post_to_storage(
            f"{url}/storage/v1/object/bench/live/0123456789abcdef/a.m4s", b"\0" * 10, "video/iso.segment"
        )
        written = b"#EXTM3U\n#EXTINF:1.0,\na.m4s\n#EXTINF:2.0,\nb.m4s\n#EXT-X-ENDLIST\n"
        post_to_storage(playlist, written, "application/vnd.apple.mpegurl", is_upsert=True)
        after = time.monotonic()

        history = servers.storage_playlist_history()
        # The segment is no playlist; the playlist's two versions, each as it was when stored.
        assert list(history) == ["live/0123456789abcdef/aa.m3u8"]
        versions = history["live/0123456789abcdef/aa.m3u8"]
        assert [(version.duration_seconds, version.is_final) for version in versions] == [
            (1.0, False),
            (3.0, True),
        ]
        # Timed on this machine's time.monotonic(), the clock the bench times first playable media on.
        assert before <= versions[0].written_seconds <= versions[1].written_seconds <= after
        # The request counts still answer on the same pipe.
        assert servers.storage_request_counts()["POST object (live/*.m3u8)"] == 2
