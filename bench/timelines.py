"""A PNG of every job's timeline, the reference pipeline above Stillpoint on one time axis, with Pillow."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bench.jobs import JobTimeline

_WIDTH = 1800
_LEFT = 250
_RIGHT = 50
_TOP = 96
_LANE_HEIGHT = 6
_ROW_GAP = 8
_SECTION_GAP = 34
_PREFERRED_LANES = (
    "source",
    "transcript",
    "image",
    "narration",
    "encode",
    "quick_video",
    "enhanced_video",
    "upload",
)
_STAGE_COLORS = {
    "source": (120, 120, 120),
    "transcript": (52, 120, 201),
    "image": (230, 145, 40),
    "narration": (60, 165, 110),
    "encode": (160, 40, 40),
    "quick_video": (200, 60, 60),
    "enhanced_video": (150, 70, 170),
    "upload": (40, 170, 180),
}
_OTHER_COLORS = ((180, 150, 60), (100, 100, 180), (170, 100, 120), (90, 140, 90))
_MILESTONE_COLORS = {
    "first_playable": (20, 150, 40),
    "quick_video": (200, 60, 60),
    "enhanced_video": (150, 70, 170),
    "completed": (0, 0, 0),
}
_MILESTONE_LABELS = {
    "first_playable": "first playable",
    "quick_video": "QUICK video",
    "enhanced_video": "ENHANCED video",
    "completed": "completed",
}
_TEXT = (30, 30, 30)
_MUTED = (110, 110, 110)
_GRID = (225, 225, 225)
_SHADE = (246, 246, 248)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow without FreeType draws its small bitmap font
        return ImageFont.load_default()


def _lanes(jobs: Sequence[JobTimeline]) -> list[str]:
    present = {span.stage for job in jobs for span in job.stages}
    ordered = [name for name in _PREFERRED_LANES if name in present]
    return ordered + sorted(present - set(ordered))


def _color(stage: str) -> tuple[int, int, int]:
    if stage in _STAGE_COLORS:
        return _STAGE_COLORS[stage]
    return _OTHER_COLORS[sum(map(ord, stage)) % len(_OTHER_COLORS)]


def _tick_step(total_seconds: float) -> float:
    for step in (1, 2, 5, 10, 15, 20, 30, 60, 120, 300):
        if total_seconds / step <= 16:
            return float(step)
    return 600.0


def _times(job: JobTimeline) -> str:
    """The row's summary: when it first played and when it was done."""
    playable, completed = job.milestones.get("first_playable"), job.milestones.get("completed")
    parts = []
    if playable is not None and playable != completed:
        parts.append(f"playable {playable:.1f} s")
    if completed is not None:
        parts.append(f"done {completed:.1f} s")
    return " · ".join(parts) or (job.error[:28] if job.error else "no milestones")


def draw_timelines(sections: Sequence[tuple[str, Sequence[JobTimeline]]], path: Path, title: str) -> None:
    """Draws one row per job (a lane per stage, ticks for milestones) for each titled section."""
    end_times = [
        value
        for _, jobs in sections
        for job in jobs
        for value in [*(span.end_seconds for span in job.stages), *job.milestones.values()]
        if value is not None
    ]
    total_seconds = max([1.0, *end_times])
    step = _tick_step(total_seconds)
    axis_seconds = math.ceil(total_seconds / step) * step
    scale = (_WIDTH - _LEFT - _RIGHT) / axis_seconds
    lanes_of = [(name, jobs, _lanes(jobs)) for name, jobs in sections]
    rows_height = sum(
        28 + len(jobs) * (max(1, len(lanes)) * _LANE_HEIGHT + _ROW_GAP) + _SECTION_GAP
        for _, jobs, lanes in lanes_of
    )
    legend_height = 90
    height = _TOP + rows_height + 30 + legend_height
    image = Image.new("RGB", (_WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    title_font, label_font, small_font = _font(22), _font(14), _font(12)
    draw.text((_LEFT, 16), title, fill=_TEXT, font=title_font)
    draw.text(
        (_LEFT, 46),
        "One row per job, seconds from sending the request. Bars: stages (one lane each). "
        "Ticks: milestones; the green diamond is the first playable media.",
        fill=_MUTED,
        font=small_font,
    )
    chart_top, chart_bottom = _TOP - 14, height - legend_height - 24

    def x_of(seconds: float) -> float:
        return _LEFT + seconds * scale

    tick = 0.0
    while tick <= axis_seconds + 1e-9:
        x = x_of(tick)
        draw.line([(x, chart_top), (x, chart_bottom)], fill=_GRID, width=1)
        label = f"{tick:g} s"
        for label_y in (chart_top - 16, chart_bottom + 4):
            label_x = x - draw.textlength(label, font=small_font) / 2
            draw.text((label_x, label_y), label, fill=_MUTED, font=small_font)
        tick += step

    y = float(_TOP)
    for name, jobs, lanes in lanes_of:
        draw.text((12, y + 4), name, fill=_TEXT, font=label_font)
        y += 28
        row_height = max(1, len(lanes)) * _LANE_HEIGHT
        for number, job in enumerate(jobs):
            if number % 2 == 0:
                draw.rectangle([(12, y - 3), (_WIDTH - _RIGHT, y + row_height + 2)], fill=_SHADE)
            label = f"job {job.index}" + ("" if job.succeeded else " (failed)")
            label_color = _TEXT if job.succeeded else (190, 30, 30)
            draw.text((24, y + row_height / 2 - 16), label, fill=label_color, font=label_font)
            draw.text((24, y + row_height / 2 + 1), _times(job), fill=_MUTED, font=small_font)
            for span in job.stages:
                lane = lanes.index(span.stage)
                top = y + lane * _LANE_HEIGHT
                left, right = (
                    x_of(span.start_seconds),
                    max(x_of(span.end_seconds), x_of(span.start_seconds) + 2),
                )
                draw.rectangle([(left, top), (right, top + _LANE_HEIGHT - 2)], fill=_color(span.stage))
            for milestone in ("quick_video", "enhanced_video", "completed"):
                value = job.milestones.get(milestone)
                if value is not None:
                    x = x_of(value)
                    draw.line(
                        [(x, y - 3), (x, y + row_height + 2)], fill=_MILESTONE_COLORS[milestone], width=2
                    )
            playable = job.milestones.get("first_playable")
            if playable is not None:
                x, middle = x_of(playable), y + row_height / 2
                draw.polygon(
                    [(x, middle - 7), (x + 6, middle), (x, middle + 7), (x - 6, middle)],
                    fill=_MILESTONE_COLORS["first_playable"],
                    outline="white",
                )
            y += row_height + _ROW_GAP
        y += _SECTION_GAP

    legend_y = height - legend_height + 8
    x = float(_LEFT)
    stages = [lane for _, _, lanes in lanes_of for lane in lanes]
    for stage in dict.fromkeys(stages):
        draw.rectangle([(x, legend_y + 3), (x + 22, legend_y + 11)], fill=_color(stage))
        text = stage.replace("_", " ")
        draw.text((x + 28, legend_y - 2), text, fill=_TEXT, font=small_font)
        x += 40 + draw.textlength(text, font=small_font) + 14
    x, legend_y = float(_LEFT), legend_y + 30
    for milestone, label in _MILESTONE_LABELS.items():
        color = _MILESTONE_COLORS[milestone]
        if milestone == "first_playable":
            draw.polygon(
                [
                    (x + 8, legend_y - 1),
                    (x + 14, legend_y + 6),
                    (x + 8, legend_y + 13),
                    (x + 2, legend_y + 6),
                ],
                fill=color,
            )
        else:
            draw.line([(x + 8, legend_y - 2), (x + 8, legend_y + 14)], fill=color, width=2)
        draw.text((x + 22, legend_y - 2), label, fill=_TEXT, font=small_font)
        x += 40 + draw.textlength(label, font=small_font) + 14
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
