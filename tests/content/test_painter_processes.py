"""The content service's painter processes: niced below the service, and gone at once when it stops."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from services.content.__main__ import start_painters, stop_painters

# A painting that would outlast any grace period.
LONG_PAINTING_SECONDS = 60.0


def _paint_slowly(seconds: float, started: Path) -> int:
    started.touch()
    time.sleep(seconds)
    return os.getpid()


def _paint_deaf_to_sigterm(seconds: float, started: Path) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return _paint_slowly(seconds, started)


def _niceness() -> int:
    return os.nice(0)


@pytest.mark.parametrize("painting", [_paint_slowly, _paint_deaf_to_sigterm])
def test_a_painting_in_flight_does_not_hold_up_the_stop(
    painting: Callable[[float, Path], int], tmp_path: Path
) -> None:
    """Even a painter that ignores SIGTERM (a disposition a process can inherit) is gone."""
    painters = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    started = tmp_path / "started"
    painters.submit(painting, LONG_PAINTING_SECONDS, started)
    # Wait until the worker is painting (not only holding the call in its queue).
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists()
    workers = list(painters._processes.values())
    assert workers and all(worker.is_alive() for worker in workers)

    stopped_at = time.monotonic()
    stop_painters(painters)
    # Not join(): the pool's own thread reaps its workers too, and a join that loses that race returns at
    # once with the worker looking alive until the other thread records its exit.
    deadline = time.monotonic() + 10
    while any(worker.is_alive() for worker in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Without the stop, the worker lives out its 60 s painting and the interpreter's exit waits for it.
    assert all(not worker.is_alive() for worker in workers)
    assert time.monotonic() - stopped_at < 10


def test_the_service_paints_at_a_lower_priority_than_it_serves() -> None:
    painters = start_painters(1)
    try:
        assert painters.submit(_niceness).result(timeout=30) > os.nice(0)
    finally:
        stop_painters(painters)
