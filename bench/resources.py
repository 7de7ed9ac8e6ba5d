"""CPU time and resident memory of groups of processes, with their children, sampled with psutil."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

SAMPLE_INTERVAL_SECONDS = 0.1
# PSS costs the kernel a walk of every mapping of every process (smaps_rollup): read every 100 ms, it was
# three quarters of the sampler's CPU at fifty jobs. RSS (statm) is read every sample; PSS at least this
# often, and whenever a group's RSS rises PSS_PEAK_MARGIN above its peak so far, where PSS peaks too, but
# no sooner than PSS_RISING_GAP_SECONDS after its last: while fifty jobs start, RSS rises past each peak by
# the margin nearly every sample, and the walks took a fifth of a core in the level's first seconds, the
# very seconds its first playable media is measured in. Nor while a group's RSS is under its PSS peak (PSS
# never exceeds RSS): no reading then could raise the peak.
PSS_INTERVAL_SECONDS = 1.0
PSS_PEAK_MARGIN = 0.02
PSS_RISING_GAP_SECONDS = 0.5


@dataclass
class ProcessGroup:
    """Root processes with every descendant, less the trees rooted at `excluded_pids`."""

    root_pids: tuple[int, ...]
    excluded_pids: frozenset[int] = field(default_factory=frozenset)

    def processes(self, table: ProcessTable | None = None) -> list[psutil.Process]:
        """The live members now (from `table` when the caller read one for several groups); processes that
        end while being read are left out."""
        table = table or ProcessTable.read()
        members: dict[int, psutil.Process] = {}
        parents: dict[int, int] = {}
        pending = [pid for pid in self.root_pids if pid not in self.excluded_pids]
        while pending:
            pid = pending.pop()
            if pid in members:
                continue
            process = table.process(pid)
            if process is None:
                continue  # ended since the table was read: its children are no longer its
            members[pid] = process
            for child in table.children.get(pid, ()):
                if child not in self.excluded_pids:
                    parents[child] = pid
                    pending.append(child)
        return [
            process
            for pid, process in members.items()
            if pid not in parents or not table.is_unexecuted_fork(pid, parents[pid])
        ]

    def cpu_seconds(self) -> float:
        """CPU time used so far: each live member's own time and that of its children it has waited for.

        A child that ended and was waited for is in its parent's children times; a live one is counted on its
        own, so nothing is counted twice.
        """
        return sum(_cpu_seconds(process) for process in self.processes())


def _is_unexecuted_fork(pid: int, parent: int) -> bool:
    """Whether `pid` is its parent forked and not yet running a program of its own (its command line is its
    parent's): a service starting FFmpeg, caught between the fork and the exec. Until then its memory is its
    parent's (vfork shares it outright), and its RSS, summed with its parent's, counted the parent twice: at
    fifty jobs, three runs in fifteen peaked at 1.61-1.71 GB against 1.38-1.44 GB, their PSS unchanged (a
    watcher of media's children saw one with media's own command line and media's 380 MB)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as child, open(f"/proc/{parent}/cmdline", "rb") as parents:
            command = child.read()
            return bool(command) and command == parents.read()
    except OSError:
        return False  # ended, or no /proc: counted as it is


def _rss_bytes(processes: Iterable[psutil.Process], table: ProcessTable) -> int:
    """Summed RSS: shared pages counted once per process, as `ps` adds them up."""
    return sum(table.rss_bytes(process) for process in processes)


def _pss_bytes(processes: Iterable[psutil.Process]) -> int:
    """Summed PSS: each shared page split between the processes sharing it, what the group really holds."""
    total = 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        total += getattr(info, "pss", info.rss)
    return total


@dataclass(frozen=True)
class ProcessTable:
    """Each process's children, from one pass over /proc.

    psutil's Process.children() reads the whole process table on every call, and the sampler called it for
    each member of a group every 100 ms: at fifty jobs, with PostgreSQL's backends and FFmpeg's children
    in the table, the bench's own process took about a sixth of a core on this 2-core machine (12 of the
    level's 123 busy CPU seconds), time taken from the services it was timing. Each /proc/PID/stat is read
    here as it is, not through psutil's per-process objects (a third of the cost).

    A table is one moment's: what its groups ask of a process (its psutil object, its RSS, whether it is an
    unexecuted fork) is read once however many groups hold it (the stack's, and each service's own)."""

    children: dict[int, list[int]]
    _processes: dict[int, psutil.Process | None] = field(default_factory=dict, compare=False, repr=False)
    _rss: dict[int, int] = field(default_factory=dict, compare=False, repr=False)
    _forks: dict[int, bool] = field(default_factory=dict, compare=False, repr=False)

    def process(self, pid: int) -> psutil.Process | None:
        """The process `pid`, or None when it has ended."""
        if pid not in self._processes:
            try:
                self._processes[pid] = psutil.Process(pid)
            except psutil.Error:
                self._processes[pid] = None
        return self._processes[pid]

    def is_unexecuted_fork(self, pid: int, parent: int) -> bool:
        if pid not in self._forks:
            self._forks[pid] = _is_unexecuted_fork(pid, parent)
        return self._forks[pid]

    def rss_bytes(self, process: psutil.Process) -> int:
        """The process's RSS (0 once it has ended)."""
        if process.pid not in self._rss:
            try:
                self._rss[process.pid] = process.memory_info().rss
            except psutil.Error:
                self._rss[process.pid] = 0
        return self._rss[process.pid]

    @classmethod
    def read(cls) -> ProcessTable:
        if not os.path.isdir("/proc/self"):
            return cls._read_with_psutil()
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    # "PID (COMMAND) STATE PPID ...": the command may hold spaces and parentheses.
                    fields = stat.read().rpartition(b")")[2].split()
            except OSError:
                continue  # ended while the table was read
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        return cls(children)

    @classmethod
    def _read_with_psutil(cls) -> ProcessTable:
        children: dict[int, list[int]] = {}
        for process in psutil.process_iter(["ppid"]):
            parent = process.info["ppid"]
            if parent is not None:
                children.setdefault(parent, []).append(process.pid)
        return cls(children)


@dataclass(frozen=True)
class MemoryReading:
    """Memory of a group of processes, in bytes."""

    rss_bytes: int
    pss_bytes: int


def machine_busy_cpu_seconds() -> float:
    """CPU time every process on the machine has used since boot (time stolen by a hypervisor excluded)."""
    times = psutil.cpu_times()
    return float(
        times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    )


def data_plane_cpu_seconds(database_name: str) -> float:
    """CPU time of the PostgreSQL backends serving `database_name` and of the Redis server, so far."""
    total = 0.0
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            command = " ".join(process.info["cmdline"] or ())
            is_backend = command.startswith("postgres:") and f" {database_name} " in f"{command} "
            if is_backend or (process.info["name"] or "").startswith("redis-server"):
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def _cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system + times.children_user + times.children_system


class MemorySampler:
    """Samples the summed RSS of each named group every 100 ms on a thread (and its PSS as
    PSS_INTERVAL_SECONDS says), keeping the peaks since reset."""

    def __init__(
        self, interval_seconds: float = SAMPLE_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval_seconds = interval_seconds
        self._clock = clock
        # When each group's PSS was last read (absent: not since it was watched or reset, so it is due).
        self._pss_read_at: dict[str, float] = {}
        self._groups: dict[str, ProcessGroup] = {}
        # Groups whose PSS is never read: their RSS peak alone is wanted (each service's share of the sum).
        self._rss_only: set[str] = set()
        self._peaks: dict[str, MemoryReading] = {}
        self._samples: dict[str, int] = {}
        self._lock = threading.Lock()
        self._own_cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def watch(self, name: str, group: ProcessGroup, *, reads_pss: bool = True) -> None:
        """Starts (or restarts) watching a group, its peak from zero. `reads_pss=False`: its RSS alone, the
        PSS peak staying 0 (a walk of every mapping of every member, once more for each group it is read
        for)."""
        with self._lock:
            self._groups[name] = group
            if reads_pss:
                self._rss_only.discard(name)
            else:
                self._rss_only.add(name)
            self._peaks[name] = MemoryReading(0, 0)
            self._samples[name] = 0
            self._pss_read_at.pop(name, None)

    def forget(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self._groups.pop(name, None)
                self._rss_only.discard(name)

    def reset_peak(self, name: str) -> None:
        with self._lock:
            self._peaks[name] = MemoryReading(0, 0)
            self._samples[name] = 0
            self._pss_read_at.pop(name, None)

    def peak(self, name: str) -> MemoryReading:
        """The highest summed RSS and PSS (each at its own moment) since the group was watched or reset."""
        with self._lock:
            return self._peaks.get(name, MemoryReading(0, 0))

    def sample_count(self, name: str) -> int:
        with self._lock:
            return self._samples.get(name, 0)

    def sample_now(self) -> None:
        with self._lock:
            groups = dict(self._groups)
            peaks = dict(self._peaks)
            pss_read_at = dict(self._pss_read_at)
            rss_only = set(self._rss_only)
        table = ProcessTable.read()
        now = self._clock()
        # Each group's RSS, and its PSS where it is due (else None).
        readings: dict[str, tuple[int, int | None]] = {}
        for name, group in groups.items():
            members = group.processes(table)
            rss = _rss_bytes(members, table)
            peak = peaks.get(name, MemoryReading(0, 0))
            since_read = now - pss_read_at[name] if name in pss_read_at else math.inf
            is_rising = rss > peak.rss_bytes * (1 + PSS_PEAK_MARGIN) and since_read >= PSS_RISING_GAP_SECONDS
            # A group's PSS never exceeds its RSS, so while its RSS is under its PSS peak (memory given back
            # as jobs end) no reading could raise that peak: none is taken.
            is_pss_due = (
                name not in rss_only
                and rss > peak.pss_bytes
                and (is_rising or since_read >= PSS_INTERVAL_SECONDS)
            )
            readings[name] = (rss, _pss_bytes(members) if is_pss_due else None)
        with self._lock:
            for name, (rss, pss) in readings.items():
                if name in self._groups:
                    peak = self._peaks.get(name, MemoryReading(0, 0))
                    self._peaks[name] = MemoryReading(
                        max(peak.rss_bytes, rss), peak.pss_bytes if pss is None else max(peak.pss_bytes, pss)
                    )
                    if pss is not None:
                        self._pss_read_at[name] = now
                    self._samples[name] = self._samples.get(name, 0) + 1

    @property
    def own_cpu_seconds(self) -> float:
        """CPU time the sampling thread itself has used: a cost of measuring, not of what is measured."""
        with self._lock:
            return self._own_cpu_seconds

    def _run(self) -> None:
        while not self._stop.wait(self._interval_seconds):
            started = time.thread_time()
            self.sample_now()
            with self._lock:
                self._own_cpu_seconds += time.thread_time() - started

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
