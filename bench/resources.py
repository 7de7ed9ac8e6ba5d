"""CPU time and resident memory of groups of processes, with their children, sampled with psutil."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

SAMPLE_INTERVAL_SECONDS = 0.1


@dataclass
class ProcessGroup:
    """Root processes with every descendant, less the trees rooted at `excluded_pids`."""

    root_pids: tuple[int, ...]
    excluded_pids: frozenset[int] = field(default_factory=frozenset)

    def processes(self) -> list[psutil.Process]:
        """The live members now; processes that end while being read are left out."""
        members: dict[int, psutil.Process] = {}
        for pid in self.root_pids:
            if pid in self.excluded_pids:
                continue
            try:
                root = psutil.Process(pid)
                members[pid] = root
                pending = [root]
                while pending:
                    for child in pending.pop().children():
                        if child.pid not in self.excluded_pids and child.pid not in members:
                            members[child.pid] = child
                            pending.append(child)
            except psutil.Error:
                continue
        return list(members.values())

    def cpu_seconds(self) -> float:
        """CPU time used so far: each live member's own time and that of its children it has waited for.

        A child that ended and was waited for is in its parent's children times; a live one is counted on its
        own, so nothing is counted twice.
        """
        return sum(_cpu_seconds(process) for process in self.processes())

    def memory_bytes(self) -> MemoryReading:
        """Summed RSS (shared pages counted once per process, as `ps` adds them up) and summed PSS (each
        shared page split between the processes sharing it: what the group really occupies)."""
        rss = pss = 0
        for process in self.processes():
            try:
                info = process.memory_full_info()
            except psutil.Error:
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        return MemoryReading(rss, pss)


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
    """Samples the summed RSS of each named group every 100 ms on a thread, keeping the peak since reset."""

    def __init__(self, interval_seconds: float = SAMPLE_INTERVAL_SECONDS) -> None:
        self._interval_seconds = interval_seconds
        self._groups: dict[str, ProcessGroup] = {}
        self._peaks: dict[str, MemoryReading] = {}
        self._samples: dict[str, int] = {}
        self._lock = threading.Lock()
        self._own_cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def watch(self, name: str, group: ProcessGroup) -> None:
        """Starts (or restarts) watching a group, its peak from zero."""
        with self._lock:
            self._groups[name] = group
            self._peaks[name] = MemoryReading(0, 0)
            self._samples[name] = 0

    def forget(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self._groups.pop(name, None)

    def reset_peak(self, name: str) -> None:
        with self._lock:
            self._peaks[name] = MemoryReading(0, 0)
            self._samples[name] = 0

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
        readings = {name: group.memory_bytes() for name, group in groups.items()}
        with self._lock:
            for name, reading in readings.items():
                if name in self._groups:
                    peak = self._peaks.get(name, MemoryReading(0, 0))
                    self._peaks[name] = MemoryReading(
                        max(peak.rss_bytes, reading.rss_bytes), max(peak.pss_bytes, reading.pss_bytes)
                    )
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
