"""The report: stable JSON for machines, a Markdown table for people, the timelines chart beside them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.jobs import MILESTONES, JobTimeline
from bench.percentiles import summarize
from bench.timelines import draw_timelines

GIGABYTE = 1_000_000_000
MEGABYTE = 1_000_000
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

    @property
    def target(self) -> str:
        return f"{'≥' if self.comparison == '>=' else '≤'} {_number(self.threshold)}{self.unit}"

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
        }


def pipeline_section(
    jobs: Sequence[JobTimeline],
    *,
    cpu_seconds: float,
    peak_rss_bytes: int,
    wall_seconds: float,
    peak_pss_bytes: int | None = None,
) -> dict[str, Any]:
    """Milestone percentiles, cost per job and the jobs themselves."""
    count = len(jobs)
    section: dict[str, Any] = {
        "jobs": count,
        "succeeded": sum(job.succeeded for job in jobs),
        "failures": [f"job {job.index}: {job.error}" for job in jobs if not job.succeeded],
    }
    for milestone in MILESTONES:
        section[f"{milestone}_seconds"] = summarize([job.milestones[milestone] for job in jobs])
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
    section["peak_rss_bytes"] = peak_rss_bytes
    section["peak_pss_bytes"] = peak_pss_bytes
    section["wall_seconds"] = wall_seconds
    section["notes"] = sorted({note for job in jobs for note in job.notes})
    section["timelines"] = [job.to_json_object() for job in jobs]
    return section


def build_targets(encode: Mapping[str, Any] | None, concurrency: Mapping[str, Any]) -> list[Target]:
    """The goals Stillpoint is held to, with what this run measured (None where it was not measured)."""
    speedups: Mapping[str, Any] = (encode or {}).get("speedup_over_reference", {})
    commands: Mapping[str, Any] = (encode or {}).get("commands", {})

    def ssim(name: str) -> float | None:
        entry = commands.get(name)
        return entry.get("ssim") if isinstance(entry, Mapping) else None

    reference_ssim = ssim("reference")
    targets = [
        Target(
            "encode: QUICK render from WAV vs the reference encode",
            ">=",
            60.0,
            "×",
            speedups.get("stillpoint_quick_from_wav"),
            "wall time, median of the repetitions",
        ),
        Target(
            "encode: QUICK render from already-AAC narration vs the reference encode",
            ">=",
            200.0,
            "×",
            speedups.get("stillpoint_quick_from_aac"),
            "audio stream copied"
            if (encode or {}).get("audio_copy_supported")
            else "no stream copy: not measured",
        ),
    ]
    for name, label in (("stillpoint_quick_from_wav", "QUICK"), ("stillpoint_enhanced_from_wav", "ENHANCED")):
        quality = ssim(name)
        targets.append(
            Target(
                f"encode: {label} SSIM (luma) minus the reference encode's",
                ">=",
                0.0,
                "",
                None if quality is None or reference_ssim is None else quality - reference_ssim,
                f"{label} {_number(quality, 4)} vs the reference encode {_number(reference_ssim, 4)}"
                " (the middle frame against the source image)",
            )
        )
    fifty: Mapping[str, Any] = concurrency.get("50", {})
    first_playable: Mapping[str, Any] = fifty.get("first_playable_seconds", {})
    peak, peak_pss = fifty.get("peak_rss_bytes"), fifty.get("peak_pss_bytes")
    targets += [
        Target(
            "50 concurrent jobs on 2 cores: p95 first playable",
            "<=",
            6.0,
            " s",
            first_playable.get("p95"),
        ),
        Target(
            "50 concurrent jobs: peak RSS of all services",
            "<=",
            1.5,
            " GB",
            None if peak is None else peak / GIGABYTE,
            "summed RSS counts shared pages once per process; summed PSS (shared pages split) was "
            + ("not measured" if peak_pss is None else f"{peak_pss / GIGABYTE:.2f} GB"),
        ),
    ]
    return targets


def write_report(
    report: Mapping[str, Any], sections: Sequence[tuple[str, Sequence[JobTimeline]]], output: Path
) -> None:
    """Writes report.json, report.md and timelines.png into `output`."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    (output / "report.md").write_text(render_markdown(report))
    draw_timelines(
        sections, output / "timelines.png", "Reference pipeline vs Stillpoint: one job at a time, cold caches"
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
            + ". Stillpoint uses the real PostgreSQL and Redis.",
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
        lines += [
            "",
            "The reference pipeline delivers nothing until its one video is uploaded: its first event, first"
            " playable media, QUICK and ENHANCED times are all its completion time.",
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
            f" of {encode.get('repetitions')} run(s); SSIM of the middle frame against the source image"
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
    concurrency = report.get("concurrency", {})
    if concurrency:
        lines += [
            "## Concurrency (Stillpoint, jobs streamed in parallel)",
            "",
            "| concurrent jobs | succeeded | first playable p50 | p95 | completed p50 | p95 | peak RSS (PSS) "
            "| CPU s/job | wall |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for level, entry in concurrency.items():
            playable, completed = entry.get("first_playable_seconds", {}), entry.get("completed_seconds", {})
            lines.append(
                f"| {level} | {entry.get('succeeded')}/{entry.get('jobs')} | "
                f"{_seconds(playable.get('p50'))} | {_seconds(playable.get('p95'))} | "
                f"{_seconds(completed.get('p50'))} | "
                f"{_seconds(completed.get('p95'))} | {_memory(entry)} | "
                f"{_number(entry.get('cpu_seconds_per_job'))} | {_seconds(entry.get('wall_seconds'))} |"
            )
        sources = {level: entry.get("source") for level, entry in concurrency.items() if entry.get("source")}
        for level, source in sources.items():
            lines.append(f"\nLevel {level}: {source}.")
        lines.append("")
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


def _measured(target: Mapping[str, Any]) -> str:
    value = target.get("measured")
    if value is None:
        return "not measured"
    return f"{_number(value, 4 if target.get('unit') == '' else 2)}{_unit_suffix(target)}"


def _unit_suffix(target: Mapping[str, Any]) -> str:
    unit = str(target.get("unit", ""))
    return "" if not unit else ("×" if unit == "×" else f" {unit}")


def _verdict(target: Mapping[str, Any]) -> str:
    met, margin = target.get("met"), target.get("margin")
    if met is None or margin is None:
        return "not measured"
    fraction = target.get("margin_fraction")
    share = "" if fraction is None else f" ({abs(fraction) * 100:.0f} %)"
    amount = f"{_number(abs(margin), 4 if target.get('unit') == '' else 2)}{_unit_suffix(target)}"
    return f"met, by {amount}{share}" if met else f"**missed**, by {amount}{share}"


def _upload_scaling(scale_by_bytes: object) -> str:
    if isinstance(scale_by_bytes, int):
        return f" for {scale_by_bytes / MEGABYTE:g} MB (scaled by size, at least 5 %)"
    return " for every upload and TUS PATCH however small"


def _memory(section: Mapping[str, Any] | None) -> str:
    rss, pss = (section or {}).get("peak_rss_bytes"), (section or {}).get("peak_pss_bytes")
    return _megabytes(rss) + ("" if pss is None else f" ({_megabytes(pss)})")


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
