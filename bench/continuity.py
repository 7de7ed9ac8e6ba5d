"""How continuously a live preview plays: the stalls of a player that starts at first playable media."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# A playlist lists each segment's seconds as `#EXTINF:<seconds>,` and ends, once complete, with ENDLIST.
_SEGMENT_SECONDS = re.compile(r"^#EXTINF:\s*([0-9]+(?:\.[0-9]*)?)", re.MULTILINE)
_ENDLIST = "#EXT-X-ENDLIST"
# Gaps shorter than this are the rounding of summed floats, not a pause anyone hears.
_NEGLIGIBLE_SECONDS = 1e-6


@dataclass(frozen=True)
class PlaylistVersion:
    """One version of a live playlist: readable from `written_seconds` on, listing `duration_seconds` of
    media, and the last one (`#EXT-X-ENDLIST`) when `is_final`."""

    written_seconds: float
    duration_seconds: float
    is_final: bool


@dataclass(frozen=True)
class Continuity:
    """What a listener of one live preview went through: how long, how often and at most how long at once
    the player waited with nothing to play; `has_ended` is False when no final version was ever written
    (then the last stall runs to the end of the observation)."""

    stall_seconds: float
    stall_count: int
    longest_stall_seconds: float
    has_ended: bool

    def to_json_object(self) -> dict[str, object]:
        return {
            "stall_seconds": round(self.stall_seconds, 3),
            "stall_count": self.stall_count,
            "longest_stall_seconds": round(self.longest_stall_seconds, 3),
            "has_ended": self.has_ended,
        }


def describe_playlist(text: str) -> tuple[float, bool]:
    """The seconds an HLS media playlist lists (the sum of its `#EXTINF` durations) and whether it is
    complete (`#EXT-X-ENDLIST`)."""
    duration = sum(float(seconds) for seconds in _SEGMENT_SECONDS.findall(text))
    return duration, _ENDLIST in text


def playlist_versions_of(
    history: Mapping[str, Sequence[PlaylistVersion]], meditation: str
) -> list[PlaylistVersion]:
    """The versions of a meditation's live playlist, oldest first, from every stored playlist's versions by
    its key; empty when it has none.

    The media service keeps a meditation's live playlist at `live/{id}/{random}.m3u8` for `meditations/{id}`.
    Should a meditation have several (a job attempted again), the first one written is the one its
    `playlist_ready` announced and its listener plays."""
    meditation_id = meditation.removeprefix("meditations/")
    if not meditation_id or meditation_id == meditation:
        return []
    folder = f"live/{meditation_id}/"
    candidates = [
        sorted(versions, key=lambda version: version.written_seconds)
        for key, versions in history.items()
        if key.startswith(folder) and key.endswith(".m3u8") and versions
    ]
    if not candidates:
        return []
    return min(candidates, key=lambda versions: versions[0].written_seconds)


def simulate_playback(
    first_playable_seconds: float, versions: Iterable[PlaylistVersion], observed_until_seconds: float
) -> Continuity:
    """Plays a live playlist from first playable media and counts the waits, all times on one clock.

    The player starts at `first_playable_seconds` with what the versions written by then list, plays at 1x,
    and pauses whenever it reaches the end of what the versions written so far list, until it has played a
    final version to its end. It learns of a new version the moment storage holds it: a real player reloads
    the playlist every target duration or so, and those reload intervals are ignored here (they would add
    at most a segment's length to each stall). A version listing less than an earlier one (never expected)
    takes nothing away: the player keeps the segments it already knows.

    A wait before the first version (first playable announced before any playlist was readable, which
    should not happen) counts as a stall too. When no final version was ever written, the player waits
    from the end of the last version until `observed_until_seconds` and the result says `has_ended` False:
    how long the listener would really wait is unknown, so callers leave such a job out of percentiles.
    """
    ordered = sorted(versions, key=lambda version: version.written_seconds)
    now, position = first_playable_seconds, 0.0
    available = 0.0
    final_seconds: float | None = None
    taken = 0
    stalls: list[float] = []

    def take_versions_written_by(moment: float) -> None:
        nonlocal available, final_seconds, taken
        while taken < len(ordered) and ordered[taken].written_seconds <= moment:
            version = ordered[taken]
            available = max(available, version.duration_seconds)
            if version.is_final:
                final_seconds = version.duration_seconds
            taken += 1

    take_versions_written_by(now)
    while True:
        next_written = ordered[taken].written_seconds if taken < len(ordered) else math.inf
        runs_dry_at = now + (available - position)
        if runs_dry_at > next_written:
            # A new version comes while there is still something to play.
            position += next_written - now
            now = next_written
            take_versions_written_by(now)
            continue
        position, now = available, runs_dry_at
        if final_seconds is not None and position >= final_seconds - _NEGLIGIBLE_SECONDS:
            return _continuity(stalls, has_ended=True)
        if math.isinf(next_written):
            _add_stall(stalls, observed_until_seconds - now)
            return _continuity(stalls, has_ended=False)
        _add_stall(stalls, next_written - now)
        now = next_written
        take_versions_written_by(now)


def _add_stall(stalls: list[float], seconds: float) -> None:
    if seconds > _NEGLIGIBLE_SECONDS:
        stalls.append(seconds)


def _continuity(stalls: Sequence[float], *, has_ended: bool) -> Continuity:
    return Continuity(
        stall_seconds=sum(stalls),
        stall_count=len(stalls),
        longest_stall_seconds=max(stalls, default=0.0),
        has_ended=has_ended,
    )
