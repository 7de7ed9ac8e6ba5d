"""CPU profiles of the running services: py-spy records each process by pid, the bench ranks its functions.

py-spy (`record --format raw`) writes collapsed stacks, one line per distinct stack, root first:
`outer (file.py:10);inner (file.py:42) 17` — 17 samples in `inner`, called from `outer`. With `--function`
each frame's line is the function's first line, so a function is one entry however many of its lines ran.
Idle threads are not sampled (no `--idle`): the samples are where the process spent CPU.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

# Samples per second and process. Lower than py-spy's 100: three profilers share the two cores the profiled
# services run on. At 50 they took 5.2 CPU s during the 50-job level (its 67 s; media's alone 3.1 s, at
# about 0.45 ms a sample), most of it in the first seconds when the cores are short and first playable is
# measured; at 20 about 2 s, and the top functions still rest on thousands of media's samples.
DEFAULT_RATE_HERTZ = 20
TOP_ENTRIES = 10
_STOP_TIMEOUT_SECONDS = 30.0
_FRAME = re.compile(r"^(?P<function>.*) \((?P<location>[^()]*:\d+)\)$")
# Frames nearly every sample passes through (the interpreter's entry, the event loop, the thread pool, a
# service's `__main__` and its one serving frame): ranked by total they would fill the top ten and say
# nothing, so the by-total ranking leaves them out.
_PLUMBING_LOCATIONS = ("<frozen ", "asyncio/", "threading.py:", "concurrent/futures/", "selectors.py:")
_PLUMBING_FILES = ("/__main__.py:", "services/serving.py:")


@dataclass(frozen=True)
class Frame:
    """One function: its name and where it is (`file:line`, the line the function starts on)."""

    function: str
    location: str


@dataclass(frozen=True)
class ProfileEntry:
    """A function's share of a profile: samples where it was running (self) and on the stack (total)."""

    frame: Frame
    self_samples: int
    total_samples: int

    def to_json_object(self, samples: int) -> dict[str, object]:
        return {
            "function": self.frame.function,
            "location": self.frame.location,
            "self_samples": self.self_samples,
            "total_samples": self.total_samples,
            "self_share": self.self_samples / samples if samples else None,
            "total_share": self.total_samples / samples if samples else None,
        }


@dataclass(frozen=True)
class ProfileSummary:
    """The top functions of one profile by self and by total samples."""

    samples: int
    top_self: list[ProfileEntry]
    top_total: list[ProfileEntry]

    def to_json_object(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "top_self": [entry.to_json_object(self.samples) for entry in self.top_self],
            "top_total": [entry.to_json_object(self.samples) for entry in self.top_total],
        }


def parse_frame(text: str) -> Frame:
    """`inner (services/x.py:42)` → Frame("inner", "services/x.py:42"); a frame without a location keeps
    its whole text as the function."""
    found = _FRAME.match(text.strip())
    if found is None:
        return Frame(text.strip(), "")
    return Frame(found["function"], found["location"])


def parse_collapsed(lines: Iterable[str]) -> Counter[tuple[Frame, ...]]:
    """Collapsed stacks (`frame;frame;... COUNT` per line) → samples per stack, root first.

    Lines that are not a stack and a count (blank ones, py-spy's messages) are skipped."""
    stacks: Counter[tuple[Frame, ...]] = Counter()
    for line in lines:
        stack_text, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        stacks[tuple(parse_frame(frame) for frame in stack_text.split(";"))] += int(count_text)
    return stacks


def summarize_profile(stacks: Mapping[tuple[Frame, ...], int], top: int = TOP_ENTRIES) -> ProfileSummary:
    """Ranks functions by self samples (the stack's last frame) and by total samples (anywhere on the stack,
    once per stack however deep the recursion; the plumbing every sample passes through left out)."""
    self_samples: Counter[Frame] = Counter()
    total_samples: Counter[Frame] = Counter()
    for stack, count in stacks.items():
        if not stack:
            continue
        self_samples[stack[-1]] += count
        for frame in set(stack):
            total_samples[frame] += count

    def entry(frame: Frame) -> ProfileEntry:
        return ProfileEntry(frame, self_samples[frame], total_samples[frame])

    # Ties are broken by name, so the same profile always ranks the same way.
    def ranked(counts: Counter[Frame]) -> list[ProfileEntry]:
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0].function, item[0].location))
        return [entry(frame) for frame, _ in ordered[:top]]

    callers = Counter({frame: count for frame, count in total_samples.items() if not is_plumbing(frame)})
    return ProfileSummary(sum(stacks.values()), ranked(self_samples), ranked(callers))


def is_plumbing(frame: Frame) -> bool:
    """Whether a frame is the process's entry or the standard library's event loop, threads or pools."""
    return (
        frame.function == "<module>"
        or frame.location.startswith(_PLUMBING_LOCATIONS)
        or any(part in frame.location for part in _PLUMBING_FILES)
    )


def find_py_spy() -> str | None:
    """The py-spy beside this Python (the venv's, from the dev extra), else one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def with_python_children(targets: Mapping[str, int]) -> dict[str, int]:
    """The targets and the Python processes among their children, each named after its parent's key and its
    own pid (`media.1234`): media encodes in a child process of its own, content paints in a pool of them,
    and a profile of the parent alone would miss that work. FFmpeg's children py-spy cannot read."""
    found = dict(targets)
    for key, pid in targets.items():
        try:
            parent = psutil.Process(pid)
            children = parent.children(recursive=True)
            interpreter = parent.exe()
        except psutil.Error:
            continue  # ended: its recording reports it
        for child in children:
            with contextlib.suppress(psutil.Error):  # ended since it was listed
                if child.exe() == interpreter:
                    found[f"{key}.{child.pid}"] = child.pid
    return found


@dataclass
class _Recording:
    name: str
    pid: int
    output: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    cpu_seconds: float = 0.0
    error: str = ""


@dataclass
class ProfileRecorder:
    """Records several processes with py-spy at once, from `start()` to `stop()`.

    `targets` maps a recording's name (a replica key: `media`, `media-2`) to its pid; `services` maps each
    name to the service it is a replica of, so a service's profile merges its replicas'. Nothing here
    raises for a profiler that cannot attach (no ptrace permission, py-spy missing): the failure is
    reported, and the bench goes on.
    """

    targets: Mapping[str, int]
    output_dir: Path
    services: Mapping[str, str] = field(default_factory=dict)
    rate_hertz: int = DEFAULT_RATE_HERTZ
    py_spy: str | None = field(default_factory=find_py_spy)
    _recordings: list[_Recording] = field(default_factory=list)

    def start(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.targets.items():
            recording = _Recording(
                name, pid, self.output_dir / f"{name}.txt", self.output_dir / f"{name}.log"
            )
            self._recordings.append(recording)
            if self.py_spy is None:
                recording.error = "py-spy is not installed (the dev extra has it: make install)"
                continue
            recording.output.unlink(missing_ok=True)
            with open(recording.log, "wb") as log:
                recording.process = subprocess.Popen(
                    [
                        self.py_spy,
                        "record",
                        *("--pid", str(pid)),
                        *("--format", "raw", "--function"),
                        # Sampling without pausing the process: the level's latencies stay the ones measured.
                        "--nonblocking",
                        *("--rate", str(self.rate_hertz)),
                        *("--output", str(recording.output)),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )

    def stop(self) -> dict[str, dict[str, Any]]:
        """Stops every recording (SIGINT, as Ctrl-C, makes py-spy write its file) and returns, per service,
        its top functions or why it has none, the raw files and the profilers' own CPU time."""
        for recording in self._recordings:
            process = recording.process
            if process is None:
                continue
            try:
                times = psutil.Process(process.pid).cpu_times()
                recording.cpu_seconds = times.user + times.system
            except psutil.Error:
                pass
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                recording.error = "py-spy did not stop within 30 s of SIGINT"
        return self._summaries()

    def _summaries(self) -> dict[str, dict[str, Any]]:
        by_service: dict[str, list[_Recording]] = {}
        for recording in self._recordings:
            by_service.setdefault(self.services.get(recording.name, recording.name), []).append(recording)
        report: dict[str, dict[str, Any]] = {}
        for service, recordings in by_service.items():
            stacks: Counter[tuple[Frame, ...]] = Counter()
            errors: list[str] = []
            for recording in recordings:
                if not recording.error and not recording.output.exists():
                    tail = recording.log.read_text(errors="replace")[-600:] if recording.log.exists() else ""
                    recording.error = f"py-spy wrote no profile: {tail.strip() or 'no output'}"
                if recording.error:
                    errors.append(f"{recording.name} (pid {recording.pid}): {recording.error}")
                    continue
                stacks.update(parse_collapsed(recording.output.read_text(errors="replace").splitlines()))
            entry: dict[str, Any] = {
                "processes": {recording.name: recording.pid for recording in recordings},
                "raw_profiles": [str(r.output) for r in recordings if not r.error],
                "profiler_cpu_seconds": sum(recording.cpu_seconds for recording in recordings),
                "errors": errors,
            }
            if stacks:
                entry.update(summarize_profile(stacks).to_json_object())
            report[service] = entry
        return report

    @property
    def cpu_seconds(self) -> float:
        """The profilers' own CPU time, read as they stopped: neither the services' nor another process's."""
        return sum(recording.cpu_seconds for recording in self._recordings)
