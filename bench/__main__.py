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
from bench.run import (
    DEFAULT_PHASES,
    DEFAULT_REFERENCE_ENCODE_REPETITIONS,
    DEFAULT_REFERENCE_JOBS,
    DEFAULT_REPLICA_SETS,
    DEFAULT_SEQUENTIAL_JOBS,
    PHASES,
    BenchSettings,
    run_bench,
)
from scripts.stack import SERVICES


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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not 1.0 <= value <= 3600.0:
        raise argparse.ArgumentTypeError(f"must be between 1 and 3600 seconds, not {value:g}")
    return value


def _phases(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(chosen) - set(PHASES))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"choose from {', '.join(PHASES)}; unknown: {', '.join(unknown) or 'none'}"
        )
    return tuple(phase for phase in PHASES if phase in chosen)


def _replica_set(text: str) -> tuple[tuple[str, int], ...]:
    """`media=2` or `media=2,gateway=2`: how many replicas of which services."""
    replicas: dict[str, int] = {}
    for part in (part.strip() for part in text.split(",")):
        service, separator, count_text = part.partition("=")
        if not separator or service.strip() not in SERVICES:
            raise argparse.ArgumentTypeError(
                f"expected SERVICE=COUNT with SERVICE one of {', '.join(SERVICES)}, not {part!r}"
            )
        try:
            count = _positive(count_text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of replicas, not {count_text!r}") from None
        replicas[service.strip()] = count
    return tuple(replicas.items())


def _describe_replica_sets(sets: Sequence[Sequence[tuple[str, int]]]) -> str:
    return " and ".join(",".join(f"{service}={count}" for service, count in replicas) for replicas in sets)


def parse_settings(argv: Sequence[str] | None = None) -> BenchSettings:
    """Reads the command line (and STILLPOINT_TEST_POSTGRES_DSN, as the tests do) into settings."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--jobs",
        type=_positive,
        help=f"Stillpoint jobs run one at a time: the 1-job level (default {DEFAULT_SEQUENTIAL_JOBS})",
    )
    parser.add_argument(
        "--reference-jobs",
        type=_positive,
        help=(
            f"reference pipeline jobs run one at a time (default {DEFAULT_REFERENCE_JOBS}, at most --jobs:"
            " ~110 s each)"
        ),
    )
    parser.add_argument(
        "--concurrency", type=_levels, help="concurrent Stillpoint jobs per level (default 1,10,50)"
    )
    parser.add_argument(
        "--encode-repetitions", type=_positive, help="runs of each of Stillpoint's renders (default 3)"
    )
    parser.add_argument(
        "--reference-encode-repetitions",
        type=_positive,
        help=f"runs of the reference encode (default {DEFAULT_REFERENCE_ENCODE_REPETITIONS}: ~87 s each)",
    )
    parser.add_argument(
        "--narration-seconds", type=_seconds, help="narration length for the encodes (default 180)"
    )
    parser.add_argument(
        "--phases",
        type=_phases,
        help=f"which of {','.join(PHASES)} to run (default {','.join(DEFAULT_PHASES)})",
    )
    parser.add_argument(
        "--profile-level",
        type=_positive,
        help="the level whose services py-spy records (default: the highest level run)",
    )
    parser.add_argument("--no-profile", action="store_true", help="record no CPU profile")
    parser.add_argument(
        "--replicas",
        type=_replica_set,
        action="append",
        metavar="SERVICE=N[,SERVICE=N]",
        help=(
            "a replica set for the scaleout phase, which runs the highest level once per set; repeatable"
            f" (default {_describe_replica_sets(DEFAULT_REPLICA_SETS)}); adds scaleout to the default phases"
        ),
    )
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
    if arguments.replicas is not None and arguments.phases is None:
        arguments.phases = (*DEFAULT_PHASES, "scaleout")
    if arguments.replicas is not None and "scaleout" not in arguments.phases:
        parser.error("--replicas needs the scaleout phase: add it to --phases")
    if arguments.no_profile and arguments.profile_level is not None:
        parser.error("--profile-level and --no-profile exclude each other")
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
    renamed = {"concurrency": "concurrency_levels", "replicas": "replica_sets"}
    for name in (
        "concurrency",
        "encode_repetitions",
        "reference_encode_repetitions",
        "narration_seconds",
        "phases",
        "profile_level",
        "replicas",
    ):
        value = getattr(arguments, name)
        if value is not None:
            overrides[renamed.get(name, name)] = tuple(value) if name == "replicas" else value
    overrides["is_profiling"] = not arguments.no_profile
    model = LatencyModel()
    if arguments.seed is not None:
        model = dataclasses.replace(model, seed=arguments.seed)
    if arguments.upload_per_object:
        model = dataclasses.replace(model, upload_scale_by_bytes=None)
    overrides["latency_model"] = model
    settings = BenchSettings.quick(**overrides) if arguments.quick else BenchSettings(**overrides)  # type: ignore[arg-type]
    if settings.profile_level is not None and settings.profile_level not in settings.levels_run:
        levels = ", ".join(map(str, settings.levels_run)) or "none (no stillpoint or concurrency phase)"
        parser.error(f"--profile-level {settings.profile_level} is not a level this run runs: {levels}")
    return settings


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
