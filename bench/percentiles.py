"""Percentiles and summaries of measured times."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` (0 to 1) percentile by linear interpolation between closest ranks (numpy's default).

    Raises ValueError for an empty sequence, a fraction outside [0, 1] or a value that is not finite.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(float(value) for value in values)
    if not all(math.isfinite(value) for value in ordered):
        raise ValueError("every value must be a finite number")
    position = fraction * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def summarize(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """p50, p95, min, max and mean of the values that were measured, and how many there were.

    Missing values (None: a job that never reached the milestone) are counted in `missing`; with none
    measured every statistic is None.
    """
    measured = [float(value) for value in values if value is not None]
    summary: dict[str, float | int | None] = {
        "p50": None,
        "p95": None,
        "min": None,
        "max": None,
        "mean": None,
        "count": len(measured),
        "missing": len(values) - len(measured),
    }
    if measured:
        summary.update(
            p50=percentile(measured, 0.50),
            p95=percentile(measured, 0.95),
            min=min(measured),
            max=max(measured),
            mean=sum(measured) / len(measured),
        )
    return summary
