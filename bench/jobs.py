"""What one measured job went through: its milestones and its stages, in seconds from sending the request."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.continuity import Continuity

# The five times reported for every job, in the order a person meets them.
MILESTONES = ("first_event", "first_playable", "quick_video", "enhanced_video", "completed")
# The per-job latencies derived from a job's events (JobTimeline.derived_seconds), as the report names them.
DERIVED_LATENCIES = ("queue_wait", "quick_after_transcript", "quick_upload", "enhanced_after_image_and_quick")


@dataclass(frozen=True)
class StageSpan:
    """One run of a stage: when it started and ended, from sending the request."""

    stage: str
    start_seconds: float
    end_seconds: float
    outcome: str = "succeeded"
    # How long the stage ran by its own end event (`stage_elapsed`), where that is not what the client saw:
    # a stage another service ran and timed (media's upload of the QUICK video it made) is reported in a
    # burst once it is over. None: the span's own length.
    reported_seconds: float | None = None

    @property
    def seconds(self) -> float:
        """How long the stage ran: as its end event reported it, or as the client saw it."""
        return (
            self.end_seconds - self.start_seconds if self.reported_seconds is None else self.reported_seconds
        )


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
    # From the client's stream: when `accepted` arrived and when the first stage started (None where the
    # pipeline has no such event, as the reference pipeline).
    accepted_seconds: float | None = None
    first_stage_started_seconds: float | None = None
    # The job's `meditations/{id}`, from its `accepted` event ("" where there is none).
    meditation: str = ""
    # time.monotonic() when the request was sent: the times above are from it, and this places them on the
    # clock every process of the machine shares (the storage server's record of the live playlist).
    started_monotonic_seconds: float | None = None
    # How the live preview played from first playable media, when the job had one and it was measured.
    preview_continuity: Continuity | None = None

    @property
    def queue_wait_seconds(self) -> float | None:
        """From `accepted` to the start of the first stage: how long the job waited for a worker."""
        if self.accepted_seconds is None or self.first_stage_started_seconds is None:
            return None
        return self.first_stage_started_seconds - self.accepted_seconds

    @property
    def quick_after_transcript_seconds(self) -> float | None:
        """The QUICK video's arrival less the transcript stage's end: the target is at most 2 s."""
        transcript_end = self.stage_end_seconds("transcript")
        quick = self.milestones.get("quick_video")
        if transcript_end is None or quick is None:
            return None
        return quick - transcript_end

    @property
    def quick_upload_seconds(self) -> float | None:
        """How long the QUICK video's upload took (the last upload that succeeded by the time it arrived):
        the part of QUICK − transcript end that storage's answer takes, whatever the services do."""
        quick = self.milestones.get("quick_video")
        if quick is None:
            return None
        uploads = [
            span
            for span in self.stages
            if span.stage == "upload" and span.outcome == "succeeded" and span.end_seconds <= quick
        ]
        return max(uploads, key=lambda span: span.end_seconds).seconds if uploads else None

    @property
    def enhanced_after_image_and_quick_seconds(self) -> float | None:
        """The ENHANCED video's arrival less the later of the image stage's end and the QUICK video: the
        target is at most 2 s."""
        image_end = self.stage_end_seconds("image")
        quick, enhanced = self.milestones.get("quick_video"), self.milestones.get("enhanced_video")
        if image_end is None or quick is None or enhanced is None:
            return None
        return enhanced - max(image_end, quick)

    def derived_seconds(self) -> dict[str, float | None]:
        """Every derived latency by its name in DERIVED_LATENCIES."""
        return {
            "queue_wait": self.queue_wait_seconds,
            "quick_after_transcript": self.quick_after_transcript_seconds,
            "quick_upload": self.quick_upload_seconds,
            "enhanced_after_image_and_quick": self.enhanced_after_image_and_quick_seconds,
        }

    def monotonic_seconds(self, milestone: str) -> float | None:
        """When a milestone was reached on time.monotonic(), or None where it was not (or not timed so)."""
        value = self.milestones.get(milestone)
        if value is None or self.started_monotonic_seconds is None:
            return None
        return self.started_monotonic_seconds + value

    def stage_end_seconds(self, stage: str) -> float | None:
        """When the stage last succeeded (a stage run again after a fallback counts by its last run)."""
        ends = [
            span.end_seconds for span in self.stages if span.stage == stage and span.outcome == "succeeded"
        ]
        return max(ends) if ends else None

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
                    "reported_seconds": _rounded(span.reported_seconds),
                }
                for span in self.stages
            ],
            "notes": list(self.notes),
            "accepted_seconds": _rounded(self.accepted_seconds),
            "first_stage_started_seconds": _rounded(self.first_stage_started_seconds),
            "derived_seconds": {name: _rounded(value) for name, value in self.derived_seconds().items()},
            "preview_continuity": None
            if self.preview_continuity is None
            else self.preview_continuity.to_json_object(),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
