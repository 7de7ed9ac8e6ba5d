"""make bench's process groups and memory sampler, on a real tree of processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from bench.resources import (
    PSS_INTERVAL_SECONDS,
    PSS_RISING_GAP_SECONDS,
    MemorySampler,
    ProcessGroup,
    ProcessTable,
)
from tests.process_trees import parent_of

# A root that starts two children, the first of which starts a grandchild; each prints its pid and waits
# for its stdin to close.
_TREE = """
import subprocess, sys
def spawn(code):
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return child, child.stdout.readline().decode().split()
leaf = "import os, sys; print(os.getpid(), flush=True); sys.stdin.read()"
middle = (
    "import os, subprocess, sys\\n"
    "leaf = subprocess.Popen([sys.executable, '-c', %r], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\\n"
    "print(os.getpid(), leaf.stdout.readline().decode().strip(), flush=True)\\n"
    "sys.stdin.read()\\n"
) % leaf
first, (child, grandchild) = spawn(middle)
second, (other,) = spawn(leaf)
print(child, grandchild, other, flush=True)
sys.stdin.read()
"""


@dataclass
class Tree:
    root: int
    child: int
    grandchild: int
    other_child: int


@pytest.fixture
def tree() -> Iterator[Tree]:
    root = subprocess.Popen(
        [sys.executable, "-c", _TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert root.stdout is not None
        child, grandchild, other_child = (int(pid) for pid in root.stdout.readline().split())
        yield Tree(root.pid, child, grandchild, other_child)
    finally:
        for process in psutil.Process(root.pid).children(recursive=True):
            process.kill()
        root.kill()
        root.wait()


def _pids(processes: list[psutil.Process]) -> set[int]:
    return {process.pid for process in processes}


def test_a_group_is_its_roots_with_every_descendant_less_the_excluded_trees(tree: Tree) -> None:
    """Property: children and grandchildren are members; an excluded child takes its own descendants out
    with it; a root that has ended is left out rather than failing the reading."""
    everyone = ProcessGroup((tree.root,))
    assert _pids(everyone.processes()) == {tree.root, tree.child, tree.grandchild, tree.other_child}
    without_first = ProcessGroup((tree.root,), excluded_pids=frozenset({tree.child}))
    assert _pids(without_first.processes()) == {tree.root, tree.other_child}
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert _pids(ProcessGroup((ended.pid, tree.other_child)).processes()) == {tree.other_child}


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_fork_that_has_not_run_its_program_yet_is_its_parent_counted_once() -> None:
    """A service between forking FFmpeg and FFmpeg starting: the child is its parent's memory, not more."""
    script = (
        "import os, subprocess, time\n"
        "program = subprocess.Popen(['sleep', '60'])\n"
        "fork = os.fork()\n"
        "if fork == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(program.pid, fork, flush=True)"
    )
    with parent_of(script) as (parent, (program, _)):
        members = _pids(ProcessGroup((parent,)).processes())
    assert members == {parent, program}


def test_the_process_table_read_from_proc_agrees_with_psutil(tree: Tree) -> None:
    """Property: the table's children of each process in the tree are those psutil finds by itself."""
    table = ProcessTable.read()
    for pid in (tree.root, tree.child, tree.grandchild):
        assert set(table.children.get(pid, [])) == _pids(psutil.Process(pid).children())


def test_one_sample_reads_the_process_table_once_for_every_group(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Property: a sample of several groups reads /proc once, not once per group or per member (the
    sampler's own CPU is taken from the services it measures), and still sums each group's members."""
    reads: list[ProcessTable] = []
    read = ProcessTable.read

    def counted() -> ProcessTable:
        reads.append(read())
        return reads[-1]

    monkeypatch.setattr(ProcessTable, "read", staticmethod(counted))
    sampler = MemorySampler()
    sampler.watch("whole", ProcessGroup((tree.root,)))
    sampler.watch("one", ProcessGroup((tree.grandchild,)))
    sampler.sample_now()
    assert len(reads) == 1
    whole, one = sampler.peak("whole"), sampler.peak("one")
    assert one.rss_bytes > 0
    # Four Python interpreters against one: the whole tree holds several times the grandchild's memory.
    assert whole.rss_bytes > 3 * one.rss_bytes


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# A process that prints its pid, then takes 64 MB more (written, so resident) for each line it reads.
_GROWING = """
import os, sys
held = []
print(os.getpid(), flush=True)
for _ in sys.stdin:
    held.append(b"x" * (64 << 20))
    print("grown", flush=True)
"""


def test_pss_is_read_at_a_new_rss_peak_and_once_a_second_rss_every_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Property: the first sample reads PSS; one at the same RSS soon after does not (PSS, a walk of every
    mapping, was most of the sampler's cost); one a second later does, and so does one whose RSS rose past
    the peak by more than the margin, but not within PSS_RISING_GAP_SECONDS of the last read (while fifty
    jobs start, RSS rises past its peak nearly every sample). Every sample keeps the RSS peak."""
    pss_reads: list[float] = []
    memory_full_info = psutil.Process.memory_full_info
    clock = _Clock()

    def counted(process: psutil.Process) -> Any:
        pss_reads.append(clock.now)
        return memory_full_info(process)

    monkeypatch.setattr(psutil.Process, "memory_full_info", counted)
    growing = subprocess.Popen(
        [sys.executable, "-c", _GROWING], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert growing.stdin is not None and growing.stdout is not None
        growing.stdout.readline()
        sampler = MemorySampler(clock=clock)
        sampler.watch("growing", ProcessGroup((growing.pid,)))
        sampler.sample_now()
        first = sampler.peak("growing")
        assert pss_reads == [100.0] and first.pss_bytes > 0
        clock.now += PSS_INTERVAL_SECONDS / 2
        sampler.sample_now()
        assert pss_reads == [100.0]
        clock.now += PSS_INTERVAL_SECONDS / 2
        sampler.sample_now()
        assert pss_reads == [100.0, 100.0 + PSS_INTERVAL_SECONDS]
        growing.stdin.write("grow\n")
        growing.stdin.flush()
        assert growing.stdout.readline().strip() == "grown"
        # Risen, but too soon after the last read: its RSS peak is kept, its PSS not read.
        clock.now += PSS_RISING_GAP_SECONDS / 2
        sampler.sample_now()
        assert len(pss_reads) == 2
        assert sampler.peak("growing").rss_bytes >= first.rss_bytes + (60 << 20)
        growing.stdin.write("grow\n")
        growing.stdin.flush()
        assert growing.stdout.readline().strip() == "grown"
        # Risen again past the new RSS peak once the gap is over, well before the second's read is due.
        clock.now += PSS_RISING_GAP_SECONDS / 2
        sampler.sample_now()
        assert pss_reads[2:] == [clock.now] and clock.now < pss_reads[1] + PSS_INTERVAL_SECONDS
        grown = sampler.peak("growing")
        assert grown.rss_bytes >= first.rss_bytes + (120 << 20)
        assert grown.pss_bytes >= first.pss_bytes + (120 << 20)
        assert sampler.sample_count("growing") == 5
    finally:
        growing.kill()
        growing.wait()


@pytest.fixture
def pss_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pid of every PSS reading (a walk of every mapping: psutil's memory_full_info), in order."""
    reads: list[int] = []
    memory_full_info = psutil.Process.memory_full_info

    def counted(process: psutil.Process) -> Any:
        reads.append(process.pid)
        return memory_full_info(process)

    monkeypatch.setattr(psutil.Process, "memory_full_info", counted)
    return reads


def test_a_group_watched_for_rss_alone_never_has_its_pss_read(tree: Tree, pss_reads: list[int]) -> None:
    """Property: each service's own peak (reads_pss=False) costs no walk of its mappings; the group beside
    it that reads PSS still reads it, for its own members only."""
    sampler = MemorySampler()
    sampler.watch("whole", ProcessGroup((tree.root,)))
    sampler.watch("service", ProcessGroup((tree.child,)), reads_pss=False)
    sampler.sample_now()
    whole, service = sampler.peak("whole"), sampler.peak("service")
    # The child and the grandchild: two interpreters, under the whole tree's four.
    assert 0 < service.rss_bytes < whole.rss_bytes and service.pss_bytes == 0 < whole.pss_bytes
    assert sorted(pss_reads) == sorted((tree.root, tree.child, tree.grandchild, tree.other_child))
    # Watched again with PSS, the same group has it read.
    sampler.watch("service", ProcessGroup((tree.child,)))
    sampler.sample_now()
    assert sampler.peak("service").pss_bytes > 0


def test_pss_is_not_read_while_rss_is_under_the_pss_peak(pss_reads: list[int]) -> None:
    """Property: PSS never exceeds RSS, so once a group's RSS falls under its PSS peak (its jobs ended and
    gave memory back) a due reading is skipped, the peaks unchanged; a group still at its size is read."""
    big, small = (
        subprocess.Popen(
            [sys.executable, "-c", _GROWING], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    )
    try:
        assert big.stdin is not None and big.stdout is not None and small.stdout is not None
        big.stdout.readline()
        small.stdout.readline()
        big.stdin.write("grow\n")
        big.stdin.flush()
        assert big.stdout.readline().strip() == "grown"
        clock = _Clock()
        sampler = MemorySampler(clock=clock)
        sampler.watch("both", ProcessGroup((big.pid, small.pid)))
        sampler.watch("small", ProcessGroup((small.pid,)))
        sampler.sample_now()
        assert sorted(pss_reads) == sorted((big.pid, small.pid, small.pid))
        peak = sampler.peak("both")
        big.kill()
        big.wait()
        pss_reads.clear()
        clock.now += PSS_INTERVAL_SECONDS
        sampler.sample_now()
        # The small one's RSS is under both's PSS peak (the big one's 64 MB more): that group is not read; the
        # small one's own group, at its size, is.
        assert pss_reads == [small.pid]
        assert sampler.peak("both") == peak
    finally:
        for process in (big, small):
            process.kill()
            process.wait()
