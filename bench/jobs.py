"""What one measured job went through: its milestones and its stages, in seconds from sending the request."""

from __future__ import annotations

from dataclasses import dataclass, field

# The five times reported for every job, in the order a person meets them.
MILESTONES = ("first_event", "first_playable", "quick_video", "enhanced_video", "completed")


@dataclass(frozen=True)
class StageSpan:
    """One run of a stage: when it started and ended, from sending the request."""

    stage: str
    start_seconds: float
    end_seconds: float
    outcome: str = "succeeded"


@dataclass
class JobTimeline:
    """One job of one pipeline."""

    pipeline: str
    index: int
    milestones: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(MILESTONES))
    stages: list[StageSpan] = field(default_factory=list)
    # `playlist_ready` (a live HLS preview) or `quick_video`: what made the job playable first.
    first_playable_kind: str | None = None
    succeeded: bool = False
    error: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json_object(self) -> dict[str, object]:
        return {
            "index": self.index,
            "succeeded": self.succeeded,
            "error": self.error,
            "first_playable_kind": self.first_playable_kind,
            "milestones_seconds": {name: _rounded(value) for name, value in self.milestones.items()},
            "stages": [
                {
                    "stage": span.stage,
                    "start_seconds": round(span.start_seconds, 3),
                    "end_seconds": round(span.end_seconds, 3),
                    "outcome": span.outcome,
                }
                for span in self.stages
            ],
            "notes": list(self.notes),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
