"""`python -m bench`: the reference pipeline and Stillpoint under one latency model, and a report of both."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.data_plane import DEFAULT_POSTGRES_ADMIN_DSN, DEFAULT_REDIS_URL, DataPlaneUnavailableError
from bench.latency_model import LatencyModel
from bench.run import DEFAULT_REFERENCE_JOBS, PHASES, BenchSettings, run_bench


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(_positive(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,10,50: {error}") from None
    if not levels:
        raise argparse.ArgumentTypeError("needs at least one level")
    return levels


def _phases(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(chosen) - set(PHASES))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"choose from {', '.join(PHASES)}; unknown: {', '.join(unknown) or 'none'}"
        )
    return tuple(phase for phase in PHASES if phase in chosen)


def parse_settings(argv: Sequence[str] | None = None) -> BenchSettings:
    """Reads the command line (and STILLPOINT_TEST_POSTGRES_DSN, as the tests do) into settings."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--jobs", type=_positive, help="Stillpoint jobs run one at a time (default 20)")
    parser.add_argument(
        "--reference-jobs",
        type=_positive,
        help=(
            f"reference pipeline jobs run one at a time (default --jobs, at most {DEFAULT_REFERENCE_JOBS}:"
            " ~110 s each)"
        ),
    )
    parser.add_argument(
        "--concurrency", type=_levels, help="concurrent Stillpoint jobs per level (default 1,10,50)"
    )
    parser.add_argument("--encode-repetitions", type=_positive, help="runs per encode command (default 3)")
    parser.add_argument(
        "--narration-seconds", type=float, help="narration length for the encodes (default 200)"
    )
    parser.add_argument("--phases", type=_phases, help=f"which of {','.join(PHASES)} to run (default all)")
    parser.add_argument("--output-dir", type=Path, default=Path("var/bench"), help="default var/bench")
    parser.add_argument("--seed", type=int, help="seed of every simulated latency")
    parser.add_argument(
        "--upload-per-object",
        action="store_true",
        help="every upload and TUS PATCH takes the whole 1–3 s however small (default: scaled by size)",
    )
    parser.add_argument("--postgres-admin-dsn", help="where a fresh database is made for the run")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"default {DEFAULT_REDIS_URL}")
    parser.add_argument("--keep-work", action="store_true", help="keep videos and storage under OUTPUT/work")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 + 1 jobs with short scripts, levels 1,3, one encode of a 6 s narration",
    )
    arguments = parser.parse_args(argv)
    overrides: dict[str, object] = {
        "output_dir": arguments.output_dir,
        "redis_url": arguments.redis_url,
        "keep_work": arguments.keep_work,
        "postgres_admin_dsn": arguments.postgres_admin_dsn
        or os.environ.get("STILLPOINT_TEST_POSTGRES_DSN", DEFAULT_POSTGRES_ADMIN_DSN),
    }
    if arguments.jobs is not None:
        overrides["jobs"] = arguments.jobs
    if arguments.reference_jobs is not None:
        overrides["reference_jobs"] = arguments.reference_jobs
    elif arguments.jobs is not None:
        overrides["reference_jobs"] = min(arguments.jobs, DEFAULT_REFERENCE_JOBS)
    for name in ("concurrency", "encode_repetitions", "narration_seconds", "phases"):
        value = getattr(arguments, name)
        if value is not None:
            overrides["concurrency_levels" if name == "concurrency" else name] = value
    model = LatencyModel()
    if arguments.seed is not None:
        model = dataclasses.replace(model, seed=arguments.seed)
    if arguments.upload_per_object:
        model = dataclasses.replace(model, upload_scale_by_bytes=None)
    overrides["latency_model"] = model
    return BenchSettings.quick(**overrides) if arguments.quick else BenchSettings(**overrides)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    try:
        asyncio.run(run_bench(settings))
    except DataPlaneUnavailableError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
