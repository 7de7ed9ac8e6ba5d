"""The outside world as processes of their own: the OpenAI-compatible server and the Supabase-compatible one.

Each runs in its own process so that its CPU time (painting images, synthesising speech) is never counted as
either pipeline's, and both pipelines get a fresh pair with the same random seeds: the same latencies. The
storage server runs through `bench.storage_server`, which answers how many requests it has received and
which versions of the live playlists it has stored.
"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.continuity import PlaylistVersion
from bench.latency_model import LatencyModel

API_KEY = "sk-bench-stillpoint-0123456789abcdef"
SERVICE_KEY = "service-role-bench-key"
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
_START_TIMEOUT_SECONDS = 60.0
_STOP_TIMEOUT_SECONDS = 10.0


_ANSWER_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class ProviderServers:
    """Where the servers listen, their process ids, and what the storage server has received."""

    openai_base_url: str
    supabase_url: str
    pids: tuple[int, ...]
    storage_process: subprocess.Popen[bytes]

    def storage_request_counts(self) -> dict[str, int]:
        """The requests the storage server has received so far, by kind (`POST object`, ...)."""
        counts = self._ask_storage("counts", "its request counts")
        return {str(kind): int(count) for kind, count in counts.items()}

    def storage_playlist_history(self) -> dict[str, list[PlaylistVersion]]:
        """Every version of every `.m3u8` object stored so far by its key, oldest first, each timed on
        time.monotonic() (this machine's, shared by its processes) when a reader could first GET it."""
        history: dict[str, list[PlaylistVersion]] = {}
        for version in self._ask_storage("playlists", "its playlists"):
            history.setdefault(str(version["key"]), []).append(
                PlaylistVersion(
                    written_seconds=float(version["readable_monotonic_seconds"]),
                    duration_seconds=float(version["duration_seconds"]),
                    is_final=bool(version["is_final"]),
                )
            )
        return history

    def _ask_storage(self, command: str, what: str) -> Any:
        """Sends a command to the storage server's standard input and returns its one-line JSON answer."""
        process = self.storage_process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"{command}\n".encode())
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], _ANSWER_TIMEOUT_SECONDS)
        if not ready:
            raise RuntimeError(f"the storage server did not answer with {what}")
        return json.loads(process.stdout.readline())


def _start(
    command: list[str], log_path: Path, *, is_answering_stdin: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """Starts a server that prints `listening on URL` and returns it with that URL."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it below
    try:
        # From the repository root, `-m tests.servers...` imports the servers and the services they use.
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.PIPE if is_answering_stdin else subprocess.DEVNULL,
            cwd=REPOSITORY_ROOT,
        )
    finally:
        log.close()
    assert process.stdout is not None
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            line = process.stdout.readline()
            break
        if process.poll() is not None:
            break
    text = line.decode(errors="replace").strip()
    if not text.startswith("listening on "):
        _stop(process)
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise RuntimeError(f"{' '.join(command[1:4])} did not start: {text or 'no output'}\n{tail}")
    return process, text.removeprefix("listening on ")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def running_providers(
    work_dir: Path, model: LatencyModel, *, chat_text: str | None = None
) -> Iterator[ProviderServers]:
    """Starts both servers with the latency model's random seeds, yields where they are, then stops them.

    `chat_text` replaces every transcript the chat endpoint writes (short ones make a quick smoke run).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen[bytes]] = []
    try:
        openai_process, openai_origin = _start(
            [
                sys.executable,
                "-m",
                "tests.servers.openai_compatible",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--config",
                model.provider_config(API_KEY, chat_text=chat_text).to_json(),
            ],
            work_dir / "openai-compatible.log",
        )
        started.append(openai_process)
        upload = model.upload
        supabase_process, supabase_url = _start(
            [
                sys.executable,
                "-m",
                "bench.storage_server",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--root",
                str(work_dir / "supabase"),
                "--service-key",
                SERVICE_KEY,
                "--upload-latency",
                f"{upload.min_seconds},{upload.max_seconds}",
                "--upload-latency-seed",
                str(model.upload_seed),
                *(
                    ()
                    if model.upload_scale_by_bytes is None
                    else ("--upload-latency-scale-by-bytes", str(model.upload_scale_by_bytes))
                ),
            ],
            work_dir / "supabase-storage.log",
            is_answering_stdin=True,
        )
        started.append(supabase_process)
        yield ProviderServers(
            openai_base_url=f"{openai_origin}/v1",
            supabase_url=supabase_url,
            pids=tuple(process.pid for process in started),
            storage_process=supabase_process,
        )
    finally:
        for process in started:
            _stop(process)
