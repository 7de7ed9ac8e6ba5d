"""The benchmark, phase by phase: the reference pipeline, Stillpoint, the concurrency sweep, the encodes."""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import imageio_ffmpeg
import openai
import psutil
from storage3 import AsyncStorageClient

from bench.conversations import conversation_for, source_text_of
from bench.data_plane import check_redis, create_database, drop_database
from bench.encode import NARRATION_SECONDS, QUICK_NARRATION_SECONDS, compare_encodes
from bench.jobs import JobTimeline
from bench.latency_model import (
    SPEECH_MODEL,
    STILLPOINT_CHAT_MODEL,
    STILLPOINT_IMAGE_MODEL,
    LatencyModel,
)
from bench.percentiles import summarize
from bench.providers import API_KEY, SERVICE_KEY, ProviderServers, running_providers
from bench.reference_pipeline import ReferencePipeline
from bench.report import build_targets, pipeline_section, write_report
from bench.resources import (
    MemorySampler,
    ProcessGroup,
    data_plane_cpu_seconds,
    machine_busy_cpu_seconds,
)
from bench.stillpoint_pipeline import DEFAULT_JOB_TIMEOUT_SECONDS, run_jobs
from scripts.stack import running_stack

PHASES = ("reference", "stillpoint", "concurrency", "encode")
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
# A short script for `--quick`: every narration a few seconds long, so a smoke run takes about a minute.
QUICK_SCRIPT = (
    "Settle into your seat and let your eyes close. [pause 2s] Breathe in slowly, and let the breath go. "
    "[pause 2s] Notice the weight of your body, held and supported. [pause 2s] When you are ready, open your "
    "eyes and come back."
)
_SERVICES = ("content", "media", "gateway")
# A faithful reference pipeline job takes about 110 s on 2 cores (the reference encode alone about 75 s for
# a 450-word narration), so 20 of them would take 37 minutes: by default it runs this many.
DEFAULT_REFERENCE_JOBS = 3
# Other processes using more than this share of the machine's CPU during a phase make its times unreliable.
INTERFERENCE_WARNING_SHARE = 0.05


@dataclass(frozen=True)
class BenchSettings:
    """What one run measures and where it writes."""

    jobs: int = 20
    reference_jobs: int = DEFAULT_REFERENCE_JOBS
    concurrency_levels: tuple[int, ...] = (1, 10, 50)
    encode_repetitions: int = 3
    narration_seconds: float = NARRATION_SECONDS
    phases: tuple[str, ...] = PHASES
    output_dir: Path = Path("var/bench")
    postgres_admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/test"
    redis_url: str = "redis://127.0.0.1:6379/7"
    job_timeout_seconds: float = DEFAULT_JOB_TIMEOUT_SECONDS
    is_quick: bool = False
    keep_work: bool = False
    latency_model: LatencyModel = field(default_factory=LatencyModel)

    @classmethod
    def quick(cls, **overrides: Any) -> BenchSettings:
        """A smoke run: 2 Stillpoint jobs, 1 reference job, levels 1 and 3, one encode of a short script."""
        values: dict[str, Any] = {
            "jobs": 2,
            "reference_jobs": 1,
            "concurrency_levels": (1, 3),
            "encode_repetitions": 1,
            "narration_seconds": QUICK_NARRATION_SECONDS,
            "is_quick": True,
        }
        values.update(overrides)
        return cls(**values)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def run_bench(settings: BenchSettings) -> dict[str, Any]:
    """Runs the chosen phases and writes report.json, report.md and timelines.png; returns the report."""
    started = time.perf_counter()
    ffmpeg_path = imageio_ffmpeg.get_ffmpeg_exe()
    output = settings.output_dir
    work = output / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "schema_version": 1,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "jobs": settings.jobs,
            "reference_jobs": settings.reference_jobs,
            "concurrency_levels": list(settings.concurrency_levels),
            "encode_repetitions": settings.encode_repetitions,
            "narration_seconds": settings.narration_seconds,
            "phases": list(settings.phases),
            "quick": settings.is_quick,
            "job_timeout_seconds": settings.job_timeout_seconds,
            "caches": "cold: a distinct conversation per job, and skip_cache for Stillpoint",
        },
        "latency_model": settings.latency_model.to_json_object(),
    }
    sections: list[tuple[str, Sequence[JobTimeline]]] = []
    concurrency: dict[str, Any] = {}
    with MemorySampler() as sampler:
        if "reference" in settings.phases:
            reference_jobs = await _reference_phase(settings, ffmpeg_path, work, sampler)
            report["reference"] = reference_jobs[0]
            sections.append(("Reference pipeline: nothing to play until done", reference_jobs[1]))
        if "stillpoint" in settings.phases or "concurrency" in settings.phases:
            stillpoint = await _stillpoint_phases(settings, work, sampler, concurrency)
            if stillpoint is not None:
                report["stillpoint"] = stillpoint[0]
                sections.append(("Stillpoint", stillpoint[1]))
    if concurrency:
        report["concurrency"] = concurrency
    if "encode" in settings.phases:
        repetitions, seconds = settings.encode_repetitions, settings.narration_seconds
        log(f"encode comparison: {repetitions} repetition(s) on a {seconds:g} s narration")
        report["encode"] = await compare_encodes(
            ffmpeg_path,
            work / "encode",
            narration_seconds=settings.narration_seconds,
            repetitions=settings.encode_repetitions,
        )
    report["targets"] = [
        target.to_json_object()
        for target in build_targets(report.get("encode"), report.get("concurrency", {}))
    ]
    report["environment"] = _environment(ffmpeg_path, time.perf_counter() - started)
    write_report(report, sections, output)
    _keep_logs(work, output / "logs")
    if not settings.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    took = time.perf_counter() - started
    log(f"wrote {output / 'report.json'}, report.md and timelines.png in {took:.0f} s")
    return report


async def _reference_phase(
    settings: BenchSettings, ffmpeg_path: str, work: Path, sampler: MemorySampler
) -> tuple[dict[str, Any], list[JobTimeline]]:
    model = settings.latency_model
    with running_providers(work / "reference-providers", model, chat_text=_chat_text(settings)) as providers:
        group = ProcessGroup((os.getpid(),), excluded_pids=frozenset(providers.pids))
        provider_group = ProcessGroup(providers.pids)
        sampler.watch("reference", group)
        credentials = {"apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}"}
        async with (
            openai.AsyncOpenAI(api_key=API_KEY, base_url=providers.openai_base_url) as client,
            httpx.AsyncClient(headers=credentials, timeout=120) as http,
        ):
            storage = AsyncStorageClient(
                f"{providers.supabase_url}/storage/v1/", credentials, http_client=http
            )
            pipeline = ReferencePipeline(
                openai_client=client,
                storage=storage,
                http=http,
                ffmpeg_path=ffmpeg_path,
                work_dir=work / "reference",
                database_delays=model.database_delays(),
            )
            await pipeline.prepare()
            cpu_before = group.cpu_seconds() - sampler.own_cpu_seconds
            provider_before, busy_before = provider_group.cpu_seconds(), machine_busy_cpu_seconds()
            phase_started = time.perf_counter()
            jobs: list[JobTimeline] = []
            for index in range(settings.reference_jobs):
                job = await pipeline.run(index, source_text_of(conversation_for(index)))
                jobs.append(job)
                log(f"reference job {index}: {_describe(job)}")
            wall = time.perf_counter() - phase_started
            cpu = group.cpu_seconds() - sampler.own_cpu_seconds - cpu_before
            provider_cpu = provider_group.cpu_seconds() - provider_before
            busy = machine_busy_cpu_seconds() - busy_before
        sampler.sample_now()
        section = pipeline_section(
            jobs,
            cpu_seconds=cpu,
            peak_rss_bytes=sampler.peak("reference").rss_bytes,
            peak_pss_bytes=sampler.peak("reference").pss_bytes,
            wall_seconds=wall,
        )
        section["measured_processes"] = (
            "the bench process (the reference pipeline's service) and its FFmpeg children"
        )
        section["provider_servers_cpu_seconds_per_job"] = provider_cpu / len(jobs) if jobs else None
        # The sampler's own CPU is left out of the reference pipeline's, but is still busy time of this
        # machine.
        section["interference"] = _interference(
            "the reference pipeline's jobs", busy, cpu + provider_cpu, wall
        )
        sampler.forget(["reference"])
    return section, jobs


async def _stillpoint_phases(
    settings: BenchSettings, work: Path, sampler: MemorySampler, concurrency: dict[str, Any]
) -> tuple[dict[str, Any], list[JobTimeline]] | None:
    await check_redis(settings.redis_url)
    database_url = await create_database(settings.postgres_admin_dsn)
    try:
        with running_providers(
            work / "stillpoint-providers", settings.latency_model, chat_text=_chat_text(settings)
        ) as providers:
            environment = _stillpoint_environment(settings, providers, database_url)
            log("starting content, media and gateway (PostgreSQL, Redis, Supabase-compatible storage)")
            with running_stack(work / "stack", extra_environment=environment) as stack:
                meter = _StillpointMeter(
                    address=stack.gateway_address,
                    api_key=stack.api_key,
                    services=ProcessGroup(_service_pids()),
                    providers=ProcessGroup(providers.pids),
                    database_name=database_url.rsplit("/", 1)[1],
                    sampler=sampler,
                    timeout_seconds=settings.job_timeout_seconds,
                )
                sampler.watch("stillpoint", meter.services)
                result: tuple[dict[str, Any], list[JobTimeline]] | None = None
                next_index = 0
                if "stillpoint" in settings.phases:
                    log(f"stillpoint: {settings.jobs} jobs, one at a time")
                    jobs, section = await meter.measure(0, settings.jobs, concurrent=False)
                    next_index = settings.jobs
                    section["measured_processes"] = "content, media and gateway, with their children"
                    result = (section, jobs)
                for level in settings.concurrency_levels if "concurrency" in settings.phases else ():
                    if level == 1 and result is not None:
                        concurrency["1"] = _concurrency_entry(
                            result[1], result[0], "the sequential run above"
                        )
                        continue
                    log(f"concurrency {level}: {level} jobs at once")
                    await asyncio.sleep(1.0)
                    jobs, section = await meter.measure(next_index, level, concurrent=True)
                    next_index += level
                    concurrency[str(level)] = _concurrency_entry(jobs, section, "")
                sampler.forget(["stillpoint"])
                return result
    finally:
        await drop_database(settings.postgres_admin_dsn, database_url)


@dataclass(frozen=True)
class _StillpointMeter:
    """Runs batches of Stillpoint jobs and measures what they cost."""

    address: str
    api_key: str
    services: ProcessGroup
    providers: ProcessGroup
    database_name: str
    sampler: MemorySampler
    timeout_seconds: float

    async def measure(
        self, first_index: int, count: int, *, concurrent: bool
    ) -> tuple[list[JobTimeline], dict[str, Any]]:
        conversations = [conversation_for(index) for index in range(first_index, first_index + count)]
        self.sampler.reset_peak("stillpoint")
        before = self._cpu_readings()
        started = time.perf_counter()
        jobs = await run_jobs(
            self.address,
            self.api_key,
            conversations,
            concurrent=concurrent,
            first_index=first_index,
            timeout_seconds=self.timeout_seconds,
        )
        wall = time.perf_counter() - started
        # Work a job leaves behind (an upload finishing after `completed`) belongs to it: let it settle.
        await asyncio.sleep(0.5)
        self.sampler.sample_now()
        used = {name: value - before[name] for name, value in self._cpu_readings().items()}
        for job in jobs if not concurrent else []:
            log(f"stillpoint job {job.index}: {_describe(job)}")
        if concurrent:
            playable = summarize([job.milestones["first_playable"] for job in jobs])
            succeeded = sum(job.succeeded for job in jobs)
            log(f"  {succeeded}/{count} succeeded, first playable {_p50_p95(playable)}")
        section = pipeline_section(
            jobs,
            cpu_seconds=used["services"],
            peak_rss_bytes=self.sampler.peak("stillpoint").rss_bytes,
            peak_pss_bytes=self.sampler.peak("stillpoint").pss_bytes,
            wall_seconds=wall,
        )
        section["provider_servers_cpu_seconds_per_job"] = used["providers"] / count
        # PostgreSQL's backends for this run's database and the Redis server: approximate (a backend that
        # closes during the batch takes its time with it), and not part of the services' figure.
        section["data_plane_cpu_seconds_per_job"] = used["data_plane"] / count
        section["interference"] = _interference(
            f"{count} Stillpoint job(s)",
            used["machine"],
            used["services"] + used["providers"] + used["bench"] + used["data_plane"],
            wall,
        )
        return jobs, section

    def _cpu_readings(self) -> dict[str, float]:
        return {
            "services": self.services.cpu_seconds(),
            "providers": self.providers.cpu_seconds(),
            "bench": _own_cpu_seconds(),
            "data_plane": data_plane_cpu_seconds(self.database_name),
            "machine": machine_busy_cpu_seconds(),
        }


def _p50_p95(summary: dict[str, float | int | None]) -> str:
    p50, p95 = summary["p50"], summary["p95"]
    if p50 is None or p95 is None:
        return "never reached"
    return f"p50 {p50:.1f} s, p95 {p95:.1f} s"


def _own_cpu_seconds() -> float:
    """This process's own CPU time (the gRPC client and the sampler), not its children's."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def _interference(
    phase: str, busy_seconds: float, accounted_seconds: float, wall_seconds: float
) -> dict[str, Any]:
    """How much CPU other processes used while a phase ran: their work slows down what is measured."""
    available = wall_seconds * (os.cpu_count() or 1)
    other = max(0.0, busy_seconds - accounted_seconds)
    share = other / available if available > 0 else 0.0
    if share > INTERFERENCE_WARNING_SHARE:
        log(f"warning: other processes used {share:.0%} of the CPU during {phase}: its times are inflated")
    return {
        "machine_busy_cpu_seconds": busy_seconds,
        "other_processes_cpu_seconds": other,
        "other_processes_cpu_share": share,
    }


def _concurrency_entry(jobs: Sequence[JobTimeline], section: dict[str, Any], source: str) -> dict[str, Any]:
    keys = (
        "jobs",
        "succeeded",
        "failures",
        "first_event_seconds",
        "first_playable_seconds",
        "quick_video_seconds",
        "enhanced_video_seconds",
        "completed_seconds",
        "first_playable_kinds",
        "cpu_seconds_per_job",
        "peak_rss_bytes",
        "peak_pss_bytes",
        "wall_seconds",
    )
    entry = {key: section.get(key) for key in keys}
    entry["source"] = source
    if not source:
        entry["timelines"] = [job.to_json_object() for job in jobs]
    return entry


def _chat_text(settings: BenchSettings) -> str | None:
    return QUICK_SCRIPT if settings.is_quick else None


def _stillpoint_environment(
    settings: BenchSettings, providers: ProviderServers, database_url: str
) -> dict[str, str]:
    return {
        "STILLPOINT_TRANSCRIPT_PROVIDER": "openai",
        "STILLPOINT_IMAGE_PROVIDER": "openai",
        "STILLPOINT_SPEECH_PROVIDER": "openai",
        "STILLPOINT_TRANSCRIPT_MODEL": STILLPOINT_CHAT_MODEL,
        "STILLPOINT_IMAGE_MODEL": STILLPOINT_IMAGE_MODEL,
        "STILLPOINT_SPEECH_MODEL": SPEECH_MODEL,
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": providers.openai_base_url,
        # A benchmark must see provider failures, not an offline fallback that hides them.
        "STILLPOINT_FALLBACK_TO_OFFLINE": "false",
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.redis_url,
        "STILLPOINT_STORAGE": "supabase",
        "SUPABASE_URL": providers.supabase_url,
        "SUPABASE_KEY": SERVICE_KEY,
        "STILLPOINT_SUPABASE_BUCKET": "stillpoint-bench",
        # Short: a value cached now must not outlive this run's storage server.
        "STILLPOINT_CACHE_TTL_SECONDS": "900",
        # The bench is one client running up to 50 jobs at once, each with its stream: lift the per-client
        # limits.
        "STILLPOINT_MAX_JOBS_PER_OWNER": "1000",
        "STILLPOINT_MAX_STREAMS_PER_OWNER": "1000",
    }


def _service_pids() -> tuple[int, ...]:
    """The content, media and gateway processes running_stack started (children of this process)."""
    found: dict[str, int] = {}
    for child in psutil.Process().children():
        try:
            command = child.cmdline()
        except psutil.Error:
            continue
        for name in _SERVICES:
            if f"services.{name}" in command:
                found[name] = child.pid
    missing = [name for name in _SERVICES if name not in found]
    if missing:
        raise RuntimeError(f"could not find the {', '.join(missing)} process(es)")
    return tuple(found[name] for name in _SERVICES)


def _describe(job: JobTimeline) -> str:
    if not job.succeeded:
        return f"FAILED {job.error}"
    parts = [f"{name} {value:.1f}s" for name, value in job.milestones.items() if value is not None]
    return ", ".join(parts)


def _keep_logs(work: Path, logs: Path) -> None:
    shutil.rmtree(logs, ignore_errors=True)
    for path in work.rglob("*.log"):
        target = logs / path.relative_to(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def _environment(ffmpeg_path: str, wall_seconds: float) -> dict[str, Any]:
    ffmpeg_version = subprocess.run([ffmpeg_path, "-version"], capture_output=True, text=True).stdout.split(
        "\n", 1
    )[0]
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain"))
    return {
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "os": platform.platform(),
        "python": platform.python_version(),
        "ffmpeg": ffmpeg_version,
        "grpcio": _version("grpcio"),
        "openai": _version("openai"),
        "storage3": _version("storage3"),
        "git_commit": (commit or "unknown") + (" (with uncommitted changes)" if dirty else ""),
        "bench_wall_seconds": round(wall_seconds, 1),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*arguments: str) -> str:
    try:
        result = subprocess.run(
            ["git", *arguments], capture_output=True, text=True, cwd=REPOSITORY_ROOT, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""
