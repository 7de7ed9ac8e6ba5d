"""The report: stable JSON for machines, a Markdown table for people, the timelines chart beside them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.jobs import DERIVED_LATENCIES, MILESTONES, JobTimeline
from bench.percentiles import summarize
from bench.timelines import draw_timelines

GIGABYTE = 1_000_000_000
MEGABYTE = 1_000_000
_DERIVED_TITLES = {
    "queue_wait": "queue wait (accepted → first stage)",
    "quick_after_transcript": "QUICK − transcript end",
    "quick_upload": "of which the QUICK video's upload",
    "enhanced_after_image_and_quick": "ENHANCED − max(image end, QUICK)",
}
_MILESTONE_TITLES = {
    "first_event": "first event",
    "first_playable": "first playable media",
    "quick_video": "QUICK video",
    "enhanced_video": "ENHANCED video",
    "completed": "completed",
}


@dataclass(frozen=True)
class Target:
    """A goal: `measured` compared with `threshold` (`>=` or `<=`)."""

    name: str
    comparison: str
    threshold: float
    unit: str
    measured: float | None
    detail: str = ""
    # Decimal places the threshold and the measured value are shown with.
    digits: int = 2

    @property
    def target(self) -> str:
        return f"{'≥' if self.comparison == '>=' else '≤'} {_number(self.threshold, self.digits)}{self.unit}"

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        if self.comparison == ">=":
            return self.measured >= self.threshold
        return self.measured <= self.threshold

    @property
    def margin(self) -> float | None:
        """How far past the threshold, positive when better than the target."""
        if self.measured is None:
            return None
        difference = self.measured - self.threshold
        return difference if self.comparison == ">=" else -difference

    def to_json_object(self) -> dict[str, object]:
        return {
            "name": self.name,
            "target": self.target,
            "comparison": self.comparison,
            "threshold": self.threshold,
            "unit": self.unit.strip(),
            "measured": self.measured,
            "met": self.met,
            "margin": self.margin,
            "margin_fraction": None
            if self.margin is None or self.threshold == 0
            else self.margin / abs(self.threshold),
            "detail": self.detail,
            "digits": self.digits,
        }


def pipeline_section(
    jobs: Sequence[JobTimeline],
    *,
    cpu_seconds: float,
    peak_rss_bytes: int,
    wall_seconds: float,
    peak_pss_bytes: int | None = None,
    cpu_seconds_by_service: Mapping[str, float] | None = None,
    storage_requests: Mapping[str, int] | None = None,
    deadline_seconds: float | None = None,
) -> dict[str, Any]:
    """Milestone and derived percentiles, cost per job (in all and per service) and the jobs themselves."""
    count = len(jobs)
    section: dict[str, Any] = {
        "jobs": count,
        "succeeded": sum(job.succeeded for job in jobs),
        "completed_within_deadline": sum(_is_within_deadline(job, deadline_seconds) for job in jobs),
        "deadline_seconds": deadline_seconds,
        "failures": [f"job {job.index}: {job.error}" for job in jobs if not job.succeeded],
    }
    for milestone in MILESTONES:
        section[f"{milestone}_seconds"] = summarize([job.milestones[milestone] for job in jobs])
    for name in DERIVED_LATENCIES:
        section[f"{name}_seconds"] = summarize([job.derived_seconds()[name] for job in jobs])
    kinds: dict[str, int] = {}
    for job in jobs:
        if job.first_playable_kind is not None:
            kinds[job.first_playable_kind] = kinds.get(job.first_playable_kind, 0) + 1
    section["first_playable_kinds"] = kinds
    stage_names = dict.fromkeys(span.stage for job in jobs for span in job.stages)
    section["stage_seconds"] = {
        stage: summarize(
            [
                sum(span.end_seconds - span.start_seconds for span in job.stages if span.stage == stage)
                for job in jobs
                if any(span.stage == stage for span in job.stages)
            ]
        )
        for stage in stage_names
    }
    section["cpu_seconds_total"] = cpu_seconds
    section["cpu_seconds_per_job"] = cpu_seconds / count if count else None
    section["cpu_seconds_per_job_by_service"] = (
        None
        if cpu_seconds_by_service is None
        else {service: used / count if count else None for service, used in cpu_seconds_by_service.items()}
    )
    section["peak_rss_bytes"] = peak_rss_bytes
    section["peak_pss_bytes"] = peak_pss_bytes
    section["storage_requests"] = (
        None
        if storage_requests is None
        else {
            "total": sum(storage_requests.values()),
            "per_job": sum(storage_requests.values()) / count if count else None,
            "by_kind": dict(storage_requests),
        }
    )
    section["wall_seconds"] = wall_seconds
    section["notes"] = sorted({note for job in jobs for note in job.notes})
    section["timelines"] = [job.to_json_object() for job in jobs]
    return section


# A listener notices a preview that waits this long in all; shorter waits are counted but not as stalled.
PREVIEW_STALLED_AFTER_SECONDS = 0.5


def preview_section(jobs: Sequence[JobTimeline]) -> dict[str, Any]:
    """How the jobs' live previews played from first playable media: stall percentiles over the jobs whose
    playlist ended (the others are `missing`, and those that were playable but never ended are counted),
    and how many stalled more than PREVIEW_STALLED_AFTER_SECONDS in all."""
    ended = [
        job.preview_continuity
        if job.preview_continuity is not None and job.preview_continuity.has_ended
        else None
        for job in jobs
    ]
    return {
        "preview_stall_seconds": summarize([None if c is None else c.stall_seconds for c in ended]),
        "preview_longest_stall_seconds": summarize(
            [None if c is None else c.longest_stall_seconds for c in ended]
        ),
        "preview_stall_count": summarize([None if c is None else float(c.stall_count) for c in ended]),
        "preview_stalled_jobs": sum(
            c is not None and c.stall_seconds > PREVIEW_STALLED_AFTER_SECONDS for c in ended
        ),
        "preview_stalled_after_seconds": PREVIEW_STALLED_AFTER_SECONDS,
        "preview_unended_jobs": sum(
            job.preview_continuity is not None and not job.preview_continuity.has_ended for job in jobs
        ),
    }


def _is_within_deadline(job: JobTimeline, deadline_seconds: float | None) -> bool:
    completed = job.milestones.get("completed")
    if not job.succeeded or completed is None:
        return False
    return deadline_seconds is None or completed <= deadline_seconds


def level_entry(section: Mapping[str, Any], source: str = "") -> dict[str, Any]:
    """A concurrency level's figures: its section, with its timelines unless they are kept elsewhere
    (`source` says where: the sequential run's are under "stillpoint")."""
    entry = {key: value for key, value in section.items() if key != "timelines" or not source}
    entry["source"] = source
    return entry


def level_label(level: int, replicas: Mapping[str, int] | None = None) -> str:
    """`50`, or `50, media ×2` for a level run with replicas."""
    extra = ", ".join(f"{service} ×{count}" for service, count in (replicas or {}).items() if count > 1)
    return f"{level}, {extra}" if extra else str(level)


def build_targets(report: Mapping[str, Any]) -> list[Target]:
    """The goals of issue 16, with what this run measured (None where it was not measured)."""
    levels: Mapping[str, Any] = report.get("levels", {})
    one: Mapping[str, Any] = levels.get("1", {})
    many: Mapping[str, Any] = levels.get(str(TARGET_CONCURRENCY), {})
    encode: Mapping[str, Any] = report.get("encode") or {}
    speedups: Mapping[str, Any] = encode.get("speedup_over_reference", {})
    commands: Mapping[str, Any] = encode.get("commands", {})

    def ssim(name: str) -> float | None:
        entry = commands.get(name)
        return entry.get("ssim") if isinstance(entry, Mapping) else None

    # The ENHANCED render as media does it: a picture and a copy of the sound the live narration made. (A
    # WAV narration, which has no such sound, is mastered and encoded: the encode table's _from_wav rows.)
    enhanced_render = "stillpoint_enhanced_from_live_audio"
    enhanced_ssim, reference_ssim = ssim(enhanced_render), ssim("reference")
    inputs: Mapping[str, Any] = encode.get("inputs", {})
    peak, peak_pss = many.get("peak_rss_bytes"), many.get("peak_pss_bytes")
    storage_level, storage_per_job = _most_storage_requests_per_job(levels)
    wall = report.get("environment", {}).get("bench_wall_seconds")
    deadline = report.get("settings", {}).get("job_timeout_seconds", many.get("deadline_seconds"))
    is_default = bool(report.get("settings", {}).get("default_workload"))
    n = TARGET_CONCURRENCY
    return [
        Target("1 job: first playable p50", "<=", 1.5, " s", _p(one, "first_playable", "p50")),
        Target(
            "1 job: QUICK p50 ≤ transcript finished + 2 s",
            "<=",
            2.0,
            " s",
            _p(one, "quick_after_transcript", "p50"),
            "p50 over jobs of (QUICK video − end of the transcript stage); of it, the QUICK video's upload"
            f" alone took p50 {_number(_p(one, 'quick_upload', 'p50'))} s",
        ),
        Target(
            "1 job: ENHANCED p50 ≤ max(image ready, QUICK) + 2 s",
            "<=",
            2.0,
            " s",
            _p(one, "enhanced_after_image_and_quick", "p50"),
            "p50 over jobs of (ENHANCED video − the later of the image stage's end and the QUICK video)",
        ),
        Target(
            "1 job: CPU seconds per job, all services",
            "<=",
            2.0,
            " s",
            one.get("cpu_seconds_per_job"),
            "content, media and gateway with their children (FFmpeg, the painting pool)",
        ),
        Target(
            "encode: ENHANCED render vs the reference FFmpeg command",
            ">=",
            60.0,
            "×",
            speedups.get(enhanced_render),
            f"{inputs.get('image', 'image')}, {_number(inputs.get('narration_seconds'), 0)} s narration;"
            " wall time, Stillpoint's median against the reference's",
        ),
        Target(
            "encode: ENHANCED SSIM (luma) minus the reference FFmpeg command's",
            ">=",
            0.0,
            "",
            None if enhanced_ssim is None or reference_ssim is None else enhanced_ssim - reference_ssim,
            f"ENHANCED {_number(enhanced_ssim, 4)} vs the reference {_number(reference_ssim, 4)}"
            " (the middle frame against the source image)",
            digits=4,
        ),
        Target(
            "encode: QUICK render from already-AAC narration vs the reference FFmpeg command",
            ">=",
            200.0,
            "×",
            speedups.get("stillpoint_quick_from_aac"),
            "audio stream copied" if encode.get("audio_copy_supported") else "no stream copy: not measured",
        ),
        Target(
            f"{n} jobs at once: completed within {_number(deadline, 0)} s",
            ">=",
            float(n),
            f"/{n}",
            None if not many else float(many.get("completed_within_deadline", 0)),
            "succeeded, `completed` received before the job's deadline",
            digits=0,
        ),
        Target(f"{n} jobs at once: first playable p95", "<=", 6.0, " s", _p(many, "first_playable", "p95")),
        Target(f"{n} jobs at once: ENHANCED p95", "<=", 120.0, " s", _p(many, "enhanced_video", "p95")),
        Target(
            f"{n} jobs at once: peak RSS of all services",
            "<=",
            1.5,
            " GB",
            None if peak is None else peak / GIGABYTE,
            "summed RSS counts shared pages once per process; summed PSS (shared pages split) was "
            + ("not measured" if peak_pss is None else f"{peak_pss / GIGABYTE:.2f} GB"),
        ),
        Target(
            "storage requests per job",
            "<=",
            40.0,
            "",
            storage_per_job,
            "" if storage_level is None else f"the level with the most per job: {storage_level}",
            digits=1,
        ),
        Target(
            "bench wall time, default settings",
            "<=",
            10.0,
            " min",
            wall / 60 if is_default and isinstance(wall, int | float) else None,
            "measured by the bench itself, from start to the report"
            if is_default
            else "only a run with the default settings is held to it",
        ),
    ]


# The concurrency targets are for this many jobs at once.
TARGET_CONCURRENCY = 50


def _p(section: Mapping[str, Any], name: str, statistic: str) -> float | None:
    value = section.get(f"{name}_seconds", {}).get(statistic)
    return None if value is None else float(value)


def _most_storage_requests_per_job(levels: Mapping[str, Any]) -> tuple[str | None, float | None]:
    worst: tuple[str | None, float | None] = (None, None)
    for level, entry in levels.items():
        per_job = (entry.get("storage_requests") or {}).get("per_job")
        if per_job is not None and (worst[1] is None or per_job > worst[1]):
            worst = (level, float(per_job))
    return worst


def write_report(
    report: Mapping[str, Any], sections: Sequence[tuple[str, Sequence[JobTimeline]]], output: Path
) -> None:
    """Writes report.json, report.md and timelines.png into `output`."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    (output / "report.md").write_text(render_markdown(report))
    draw_timelines(
        sections,
        output / "timelines.png",
        "Reference pipeline vs Stillpoint: one job at a time, then per concurrency level, cold caches",
    )


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report for people: what was measured, against what, and which targets were met."""
    lines = ["# Stillpoint benchmark", ""]
    settings = report.get("settings", {})
    lines += [
        f"Generated {report.get('generated_at', '')}. Reference pipeline: {settings.get('reference_jobs')} "
        f"jobs, Stillpoint: {settings.get('jobs')} jobs, run one at a time on distinct conversations with "
        "cold caches" + (" (`--quick` smoke run)." if settings.get("quick") else "."),
        "",
    ]
    model = report.get("latency_model", {})
    if model:
        lines += [
            "Latency model (seeded "
            + str(model.get("seed"))
            + "): transcript "
            + _range(model.get("transcript_seconds"))
            + " (tokens streamed across it), image "
            + _range(model.get("image_seconds"))
            + ", speech "
            + _range(model.get("speech_whole_script_seconds"))
            + f" per whole script (scaled by length, {model.get('speech_scale_by_characters')} characters),"
            + " upload "
            + _range(model.get("upload_seconds"))
            + _upload_scaling(model.get("upload_scale_by_bytes"))
            + ", the reference pipeline's database "
            + _range(model.get("reference_database_seconds"))
            + ". Stillpoint uses the real PostgreSQL and Redis. The simulated provider paints one image per"
            + " size and speaks each sentence once: a real provider's work is done on its own machines.",
            "",
        ]
    reference, stillpoint = report.get("reference"), report.get("stillpoint")
    if reference or stillpoint:
        lines += [
            "## Latency, seconds from sending the request",
            "",
            "| milestone | reference p50 | reference p95 | Stillpoint p50 | Stillpoint p95 | p50 speed-up |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for milestone in MILESTONES:
            key = f"{milestone}_seconds"
            reference_summary = (reference or {}).get(key, {})
            still_summary = (stillpoint or {}).get(key, {})
            lines.append(
                f"| {_MILESTONE_TITLES[milestone]} | {_seconds(reference_summary.get('p50'))} | "
                f"{_seconds(reference_summary.get('p95'))} | {_seconds(still_summary.get('p50'))} | "
                f"{_seconds(still_summary.get('p95'))} | "
                f"{_ratio(reference_summary.get('p50'), still_summary.get('p50'))} |"
            )
        for name in DERIVED_LATENCIES:
            reference_summary = (reference or {}).get(f"{name}_seconds", {})
            still_summary = (stillpoint or {}).get(f"{name}_seconds", {})
            lines.append(
                f"| {_DERIVED_TITLES[name]} | {_seconds(reference_summary.get('p50'))} | "
                f"{_seconds(reference_summary.get('p95'))} | {_seconds(still_summary.get('p50'))} | "
                f"{_seconds(still_summary.get('p95'))} | — |"
            )
        lines += [
            "",
            "The reference pipeline delivers nothing until its one video is uploaded: its first event, first"
            " playable media, QUICK and ENHANCED times are all its completion time. Queue wait is from"
            " `accepted` to the first stage's start (the reference pipeline has no queue); the"
            " differences are per job, from the client's stream, then their percentiles. The QUICK video's"
            " upload is the last upload before it, as the service that ran it timed it (Stillpoint's media;"
            " the reference pipeline's one video): the part of QUICK − transcript end that is storage's"
            " answer under the latency model.",
        ]
        kinds = (stillpoint or {}).get("first_playable_kinds", {})
        if kinds:
            described = ", ".join(f"{kind} in {count}" for kind, count in sorted(kinds.items()))
            lines.append(f"Stillpoint's first playable media was: {described} of its jobs.")
        lines += ["", "## Cost per job", "", "| | reference | Stillpoint |", "|---|---:|---:|"]
        lines.append(
            f"| CPU seconds per job | {_number((reference or {}).get('cpu_seconds_per_job'))} | "
            f"{_number((stillpoint or {}).get('cpu_seconds_per_job'))} |"
        )
        lines.append(f"| peak RSS, summed (PSS) | {_memory(reference)} | {_memory(stillpoint)} |")
        lines.append(
            f"| jobs succeeded | {(reference or {}).get('succeeded')}/{(reference or {}).get('jobs')} | "
            f"{(stillpoint or {}).get('succeeded')}/{(stillpoint or {}).get('jobs')} |"
        )
        lines.append(
            f"| provider servers' CPU seconds per job (counted for neither) | "
            f"{_number((reference or {}).get('provider_servers_cpu_seconds_per_job'))} | "
            f"{_number((stillpoint or {}).get('provider_servers_cpu_seconds_per_job'))} |"
        )
        for service in ("content", "media", "gateway"):
            lines.append(
                f"| CPU seconds per job: {service} | — | "
                f"{_number(((stillpoint or {}).get('cpu_seconds_per_job_by_service') or {}).get(service))} |"
            )
        lines.append(
            f"| storage requests per job | {_number(_storage_per_job(reference), 1)} | "
            f"{_number(_storage_per_job(stillpoint), 1)} |"
        )
        lines.append(
            f"| PostgreSQL and Redis CPU seconds per job (counted for neither) | — | "
            f"{_number((stillpoint or {}).get('data_plane_cpu_seconds_per_job'))} |"
        )
        lines.append(
            f"| other processes' share of the CPU meanwhile | {_share(reference)} | {_share(stillpoint)} |"
        )
        lines += [
            "",
            "Reference pipeline: the bench process (its one service) and its FFmpeg children. Stillpoint: the"
            " content, media and gateway processes and their children. The provider servers' CPU counts for"
            " neither.",
            "",
        ]
        for name, section in (("Reference pipeline", reference), ("Stillpoint", stillpoint)):
            for failure in (section or {}).get("failures", []):
                lines.append(f"- {name} failure: {failure}")
            for note in (section or {}).get("notes", []):
                lines.append(f"- {name}: {note}")
        lines.append("")
    encode = report.get("encode")
    if encode:
        inputs = encode.get("inputs", {})
        lines += [
            "## Encode: one image, one narration",
            "",
            f"{inputs.get('image')}, {inputs.get('narration_seconds')} s narration; wall time is the median"
            f" of {encode.get('repetitions')} run(s) for Stillpoint's renders and of"
            f" {encode.get('reference_repetitions', encode.get('repetitions'))} for the reference command;"
            " SSIM of the middle frame against the source image"
            " (the frame scaled to the image's size).",
            "",
            "| command | wall | CPU | SSIM (Y) | SSIM (Y, U, V at 4:4:4) | output | speed-up vs reference |",
            "|---|---:|---:|---:|---:|---|---:|",
        ]
        speedups = encode.get("speedup_over_reference", {})
        for name, entry in encode.get("commands", {}).items():
            if not entry.get("supported", True):
                lines.append(f"| {name} | — | — | — | — | {entry.get('note')} | — |")
                continue
            output = (
                f"{entry.get('width_pixels')}×{entry.get('height_pixels')} {entry.get('pixel_format')}, "
                f"{_megabytes(entry.get('size_bytes'))}, "
                f"video {_seconds(entry.get('video_duration_seconds'))}"
            )
            speedup = speedups.get(name)
            lines.append(
                f"| {name} | {_seconds(entry.get('wall_seconds'), 3)} | "
                f"{_seconds(entry.get('cpu_seconds'), 3)} | {_number(entry.get('ssim'), 4)} | "
                f"{_number(entry.get('ssim_all_planes_444'), 4)} | {output} | "
                f"{'—' if speedup is None else f'{speedup:.0f}×'} |"
            )
        lines.append("")
        against_machine = _cpu_against_reference_encode(encode, stillpoint)
        if against_machine:
            lines += [against_machine, ""]
    lines += _levels_markdown(report)
    lines += _profile_markdown(report.get("profile"))
    targets = report.get("targets", [])
    if targets:
        lines += ["## Targets", "", "| target | goal | measured | result |", "|---|---:|---:|---|"]
        for target in targets:
            lines.append(
                f"| {target['name']} | {target['target']} | {_measured(target)} | {_verdict(target)} |"
            )
        lines.append("")
    environment = report.get("environment", {})
    if environment:
        lines += ["## Environment", ""]
        lines += [f"- {key}: {value}" for key, value in environment.items()]
        lines.append("")
    lines.append("Timelines: `timelines.png` beside this file.")
    return "\n".join(lines) + "\n"


def _cpu_against_reference_encode(encode: Mapping[str, Any], stillpoint: Mapping[str, Any] | None) -> str:
    """Stillpoint's CPU per job one at a time as a share of the reference encode's CPU in the same run, or
    nothing when either was not measured. Both are CPU seconds on the same cores, so both move with the
    machine's speed (a quarter between two sessions' runs of the same code): the share compares runs where
    the seconds cannot. The target itself stays in CPU seconds."""
    reference_cpu = ((encode.get("commands") or {}).get("reference") or {}).get("cpu_seconds")
    per_job = (stillpoint or {}).get("cpu_seconds_per_job")
    if not reference_cpu or per_job is None:
        return ""
    return (
        "The machine's speed, as this run measured it: Stillpoint's CPU per job one at a time,"
        f" {per_job:.2f} s, is {per_job / reference_cpu:.2%} of the reference encode's"
        f" {reference_cpu:.1f} CPU s in this run."
        " Both move with the machine's speed, so compare this share across runs, not the seconds (the"
        " target stays in CPU seconds)."
    )


def _levels_markdown(report: Mapping[str, Any]) -> list[str]:
    """Two tables, one row per concurrency level (and per scale-out run): latencies, then costs."""
    rows: list[tuple[str, Mapping[str, Any]]] = [
        (level, entry) for level, entry in report.get("levels", {}).items()
    ]
    rows += [(str(entry.get("label")), entry) for entry in report.get("scaleout", [])]
    if not rows:
        return []
    deadline = next(
        (entry.get("deadline_seconds") for _, entry in rows if entry.get("deadline_seconds")), None
    )
    lines = [
        "## Per concurrency level (Stillpoint)",
        "",
        "Level 1 is the sequential run; the others start that many jobs at once. Times in seconds from"
        " sending the request, p50 / p95 over the level's jobs that reached the milestone (a failed job, or"
        " one whose first stage never started, is left out: report.json counts them as `missing`).",
        "",
        f"| jobs at once | completed ≤ {_number(deadline, 0)} s | first playable | QUICK | ENHANCED "
        "| queue wait | QUICK − transcript end | ENHANCED − max(image end, QUICK) | wall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, entry in rows:
        lines.append(
            f"| {label} | {entry.get('completed_within_deadline')}/{entry.get('jobs')} | "
            + " | ".join(
                _pair(entry.get(f"{name}_seconds"))
                for name in (
                    "first_playable",
                    "quick_video",
                    "enhanced_video",
                    "queue_wait",
                    "quick_after_transcript",
                    "enhanced_after_image_and_quick",
                )
            )
            + f" | {_seconds(entry.get('wall_seconds'), 1)} |"
        )
    lines += _preview_markdown(rows)
    lines += [
        "",
        "| jobs at once | CPU s/job, all services | content | media | gateway "
        "| peak RSS, summed (PSS) | peak RSS: content / media / gateway | storage requests/job "
        "| providers' CPU s/job | PostgreSQL + Redis CPU s/job | other processes' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, entry in rows:
        by_service = entry.get("cpu_seconds_per_job_by_service") or {}
        lines.append(
            f"| {label} | {_number(entry.get('cpu_seconds_per_job'))} | "
            + " | ".join(_number(by_service.get(service)) for service in ("content", "media", "gateway"))
            + f" | {_memory(entry)} | {_memory_by_service(entry)} | {_number(_storage_per_job(entry), 1)} | "
            f"{_number(entry.get('provider_servers_cpu_seconds_per_job'))} | "
            f"{_number(entry.get('data_plane_cpu_seconds_per_job'))} | {_share(entry)} |"
        )
    lines += [
        "",
        "CPU per service: each service's processes (every replica) with their children, FFmpeg included."
        " Storage requests: what the Supabase-compatible server received during the level, divided by its"
        " jobs. Peak RSS: the highest sum over the services' processes, sampled every 100 ms (PSS at least"
        " once a second and whenever RSS rises 2 % past its peak); per service, each service's own highest"
        " (every replica, with its children), each at its own moment, what one container of it must hold"
        " with one replica.",
    ]
    for label, entry in rows:
        measuring = entry.get("measuring_cpu_seconds") or {}
        if measuring:
            lines.append(
                f"- level {label}: measuring used {_number(measuring.get('bench_process'), 1)} CPU s in the"
                f" bench's own process (the jobs' client and the memory sampler;"
                f" the sampler alone {_number(measuring.get('memory_sampler'), 1)} s), beside the services"
            )
        for failure in entry.get("failures", [])[:5]:
            lines.append(f"- level {label} failure: {failure}")
        for note in entry.get("notes", []):
            lines.append(f"- level {label}: {note}")
        kinds = (entry.get("storage_requests") or {}).get("by_kind") or {}
        if kinds:
            described = ", ".join(f"{kind} {count}" for kind, count in kinds.items())
            lines.append(f"- level {label} storage requests: {described}")
    lines.append("")
    return lines


def _preview_markdown(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """The live preview's stalls per level, where they were measured (older reports have none)."""
    measured = [(label, entry) for label, entry in rows if "preview_stall_seconds" in entry]
    if not measured:
        return []
    threshold = measured[0][1].get("preview_stalled_after_seconds", PREVIEW_STALLED_AFTER_SECONDS)
    lines = [
        "",
        "Live preview: a player that starts at first playable media and plays at 1x, waiting whenever it"
        " reaches the end of the newest version of the live playlist that storage holds (reloads taken as"
        " instant), until the final version's end; stalls are over the jobs whose playlist ended, and a job"
        " whose playlist never ended is counted in the last column only.",
        "",
        f"| jobs at once | jobs that stalled > {_number(threshold, 1)} s in all "
        "| total stall p50 / p95 / max | longest stall, max | stalls per job, max | playlist never ended |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, entry in measured:
        stall = entry.get("preview_stall_seconds") or {}
        longest = entry.get("preview_longest_stall_seconds") or {}
        stall_count = entry.get("preview_stall_count") or {}
        lines.append(
            f"| {label} | {entry.get('preview_stalled_jobs')}/{stall.get('count')} | "
            f"{_triple(stall)} | {_number(longest.get('max'))} | {_number(stall_count.get('max'), 0)} | "
            f"{entry.get('preview_unended_jobs')} |"
        )
    return lines


def _profile_markdown(profile: Mapping[str, Any] | None) -> list[str]:
    """Each service's top functions in the profiled level, by self and by total samples."""
    if not profile:
        return []
    lines = [
        f"## CPU profile, {profile.get('level')} jobs at once",
        "",
        "py-spy sampled each service process and its Python children (media's encoder process, content's"
        " painters; not FFmpeg) without pausing them, idle threads left out, for the whole level, in a run of"
        " the level of its own after the measured one (the sampling"
        " takes CPU from the services, so no timing above comes from a profiled run). Self: the function was"
        " running; total: it was on the stack. Raw collapsed stacks: `profiles/` beside this file.",
        "",
    ]
    for service, entry in profile.get("services", {}).items():
        lines.append(f"### {service}")
        lines.append("")
        for error in entry.get("errors", []):
            lines.append(f"- not profiled: {error}")
        samples = entry.get("samples")
        if not samples:
            lines.append("")
            continue
        lines += [
            f"{samples} samples; the profiler used {_number(entry.get('profiler_cpu_seconds'), 1)} CPU s.",
            "",
            "| by self | function | file:line | self | total |",
            "|---:|---|---|---:|---:|",
        ]
        for rank, item in enumerate(entry.get("top_self", []), 1):
            lines.append(_profile_row(rank, item))
        lines += ["", "| by total | function | file:line | self | total |", "|---:|---|---|---:|---:|"]
        for rank, item in enumerate(entry.get("top_total", []), 1):
            lines.append(_profile_row(rank, item))
        lines.append("")
    return lines


def _profile_row(rank: int, item: Mapping[str, Any]) -> str:
    function = str(item.get("function", "")).replace("|", "\\|")
    return (
        f"| {rank} | `{function}` | `{item.get('location')}` | {_percent(item.get('self_share'))} | "
        f"{_percent(item.get('total_share'))} |"
    )


def _percent(share: object) -> str:
    return "—" if not isinstance(share, int | float) else f"{share * 100:.1f} %"


def _pair(summary: object) -> str:
    """`p50 / p95` of a summary, in seconds."""
    if not isinstance(summary, Mapping) or summary.get("p50") is None:
        return "—"
    return f"{_number(summary.get('p50'))} / {_number(summary.get('p95'))}"


def _triple(summary: Mapping[str, Any]) -> str:
    """`p50 / p95 / max` of a summary, in seconds."""
    if summary.get("p50") is None:
        return "—"
    return f"{_number(summary.get('p50'))} / {_number(summary.get('p95'))} / {_number(summary.get('max'))}"


def _storage_per_job(section: Mapping[str, Any] | None) -> float | None:
    per_job = ((section or {}).get("storage_requests") or {}).get("per_job")
    return None if per_job is None else float(per_job)


def _measured(target: Mapping[str, Any]) -> str:
    value = target.get("measured")
    if value is None:
        return "not measured"
    return f"{_number(value, _digits(target))}{_unit_suffix(target)}"


def _digits(target: Mapping[str, Any]) -> int:
    digits = target.get("digits")
    return digits if isinstance(digits, int) else 2


def _unit_suffix(target: Mapping[str, Any]) -> str:
    unit = str(target.get("unit", ""))
    if not unit or unit == "×" or unit.startswith("/"):
        return unit
    return f" {unit}"


def _verdict(target: Mapping[str, Any]) -> str:
    met, margin = target.get("met"), target.get("margin")
    if met is None or margin is None:
        return "not measured"
    fraction = target.get("margin_fraction")
    share = "" if fraction is None else f" ({abs(fraction) * 100:.0f} %)"
    amount = f"{_number(abs(margin), _digits(target))}{_unit_suffix(target)}"
    return f"met, by {amount}{share}" if met else f"**missed**, by {amount}{share}"


def _upload_scaling(scale_by_bytes: object) -> str:
    if isinstance(scale_by_bytes, int):
        return f" for {scale_by_bytes / MEGABYTE:g} MB (scaled by size, at least 5 %)"
    return " for every upload and TUS PATCH however small"


def _memory(section: Mapping[str, Any] | None) -> str:
    rss, pss = (section or {}).get("peak_rss_bytes"), (section or {}).get("peak_pss_bytes")
    return _megabytes(rss) + ("" if pss is None else f" ({_megabytes(pss)})")


def _memory_by_service(section: Mapping[str, Any] | None) -> str:
    """Each service's own peak RSS; older reports have none."""
    peaks = (section or {}).get("peak_rss_bytes_by_service") or {}
    if not peaks:
        return "—"
    return " / ".join(_megabytes(peaks.get(service)) for service in ("content", "media", "gateway"))


def _share(section: Mapping[str, Any] | None) -> str:
    interference = (section or {}).get("interference") or {}
    share = interference.get("other_processes_cpu_share")
    return "—" if share is None else f"{share * 100:.1f} %"


def _range(pair: object) -> str:
    if isinstance(pair, list | tuple) and len(pair) == 2:
        return f"{pair[0]:g}–{pair[1]:g} s"
    return "?"


def _number(value: object, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, int | float):
        return f"{value:.{digits}f}"
    return str(value)


def _seconds(value: object, digits: int = 2) -> str:
    return "—" if value is None else f"{_number(value, digits)} s"


def _megabytes(value: object) -> str:
    return "—" if not isinstance(value, int | float) else f"{value / MEGABYTE:.0f} MB"


def _ratio(slow: object, fast: object) -> str:
    if isinstance(slow, int | float) and isinstance(fast, int | float) and fast > 0:
        return f"{slow / fast:.1f}×"
    return "—"
