"""The media process's encoder process: every live narration's mastering and encoding runs in one child
process of the media service, its encoders kept there by key, while the media process's event loop serves the
RPCs, the speech requests and the uploads.

Why a process: PyAV gives up the interpreter's lock around each FFmpeg call and takes it back for every AAC
frame and muxed packet, so encoder threads inside the media process made its event loop wait for the lock.
With fifty jobs at once (make bench), a 50 ms timer on media's loop overshot by 37 ms on average, and the four
storage round trips before a job's first playlist took 0.7-1.1 s each although storage answered in
0.02-0.3 s. In a process of its own, the encoding takes its own lock.

What crosses the pipe is small: the sentences' sound stays in the job's scratch folder (the child reads each
file, masters and encodes it, and removes it) and only paths, counts, keys and a still video's render profile
travel (its picture is read and encoded here). The order of the narrations' work is still the media
process's CpuLane's: its threads hand each turn here and wait, the background ones asking for a background
thread here (runs_in_background), so the child never holds more of it than the lane lets through. The still
videos queue for their one thread, at most one for each media thread waiting on an answer.

The media process's still videos are muxed here too (mux_still), and its narrations measured
(narration_seconds): each is a loop over every AAC packet in PyAV, which gives the lock up and takes it back
for each one. In the media process, two to four muxes at once each took three to seven times the CPU of one
alone (the threads handing the lock round for every packet), and a mux beside a busy event loop waited out
the lock's switch interval at every packet. Here they run one at a time, in a thread of their own.

The messages are pickled tuples of plain values, on two pipes that only this process and its child hold. A
child that ends (killed for memory, a crash in FFmpeg) fails the work it held with EncoderProcessEndedError,
and the next narration to open an encoder starts a new one; the media process's own work goes on.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from services.media import live_encoder
from services.media.errors import EncodingError, InvalidInputError
from services.media.live_encoder import LiveEncoder, WaitingSound
from services.media.still_mux import MuxedStill
from services.media.urgency import runs_in_background, yield_this_thread
from services.media.video import RenderProfile, muxed_here, narration_seconds

logger = logging.getLogger(__name__)

# How long the child may take to start and make the shared bed, keyframes and QUICK picture (a fraction of a
# second here).
START_TIMEOUT_SECONDS = 60.0
# How long a stopping child may take to finish the work it holds before it is killed.
STOP_TIMEOUT_SECONDS = 5.0
# How long one request may go unanswered before the child is taken for hung and killed (failing everything
# it held: a worker thread stuck in FFmpeg would otherwise hold a lane's thread, and every job's encoding
# behind it, for good). A request is one turn of the lane: at most a few seconds of CPU for a whole
# narration, and the lane lets no more through than the child has threads for.
ANSWER_TIMEOUT_SECONDS = 120.0
# The variables the child keeps from the media process's environment: what Python and FFmpeg need to run
# (the image's PYTHONPATH among them). Nothing else passes, so no secret (an API key, a database password) is
# in the child's environment.
_KEPT_VARIABLES = (
    "PATH",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "HOME",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
)
# The folder holding the `services` package, on the child's import path whatever its working directory.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]

# The request the child answers when it is ready (it has no request of its own).
_READY_ID = -1
# The child's pools: urgent and due work at its own priority, background work lowered (as the CpuLane's are),
# the quick steps outside the lane (opening and abandoning an encoder), and the still videos' muxes and the
# narrations' measures, one at a time (at the child's priority: see the module's docstring).
_URGENT, _BACKGROUND, _ASIDE, _STILLS = "urgent", "background", "aside", "stills"

# A request: (its id, the operation, the pool it runs in, the operation's arguments). A reply: (the request's
# id, whether it succeeded, its result or a failure). A failure: (kind, message, detail, errno); for a bad
# input, (kind, field, problem, None).
_Request = tuple[int, str, str, tuple[Any, ...]]
_Reply = tuple[int, bool, Any]
_Failure = tuple[str, str, str, int | None]


class EncoderProcessEndedError(EncodingError):
    """The encoder process ended while it held this narration's encoder, or before it could answer."""


class EncoderProcess:
    """The media process's encoder process, started again when it has ended. Its methods block: run them in a
    worker thread."""

    def __init__(self, workers: int, *, on_unexpected_end: Callable[[str], None] | None = None) -> None:
        self._workers = workers
        # Told how a child ended that nobody stopped: "exited" (a crash, killed for memory) or "unanswered"
        # (killed here after a request went unanswered); media counts it (metrics).
        self._on_unexpected_end = on_unexpected_end
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._is_stopped = False
        self._keys = itertools.count()

    @property
    def pid(self) -> int | None:
        """The child's process id, or None when none is running."""
        child = self._child
        return None if child is None or child.has_ended else child.pid

    def start(self) -> None:
        """Starts the child and waits until it is ready to encode (its bed and keyframes made)."""
        self._running_child()

    def open(self, work_dir: Path, sample_rate: int) -> RemoteLiveEncoder:
        """A LiveEncoder in the child, writing into `work_dir` (live.OpenEncoder). Starts a new child when the
        last one has ended."""
        child = self._running_child()
        key = f"encoder-{next(self._keys)}"
        aac_path = child.call("open", _ASIDE, key, str(work_dir), sample_rate)
        return RemoteLiveEncoder(child, key, Path(aac_path))

    def mux_still(
        self,
        *,
        image_path: Path | None,
        audio_path: Path,
        subtitles_path: Path | None,
        duration_seconds: float,
        output_path: Path,
        profile: RenderProfile,
    ) -> MuxedStill | None:
        """video.muxed_here, in the child (video.StillMuxer)."""
        muxed = self._running_child().call(
            "mux_still",
            _STILLS,
            None if image_path is None else str(image_path),
            str(audio_path),
            None if subtitles_path is None else str(subtitles_path),
            duration_seconds,
            str(output_path),
            profile,
        )
        if muxed is None:
            return None
        width, height, seconds = muxed
        return MuxedStill(int(width), int(height), float(seconds))

    def narration_seconds(self, path: Path) -> float:
        """video.narration_seconds, in the child."""
        return float(self._running_child().call("narration_seconds", _STILLS, str(path)))

    def stop(self) -> None:
        """Lets the child finish the work it holds and end (killed after STOP_TIMEOUT_SECONDS)."""
        with self._lock:
            self._is_stopped = True
            child, self._child = self._child, None
        if child is not None:
            child.stop(STOP_TIMEOUT_SECONDS)

    def _running_child(self) -> _Child:
        with self._lock:
            if self._is_stopped:
                raise EncoderProcessEndedError("the encoder process was stopped with the media service")
            if self._child is None or self._child.has_ended:
                if self._child is not None:
                    logger.warning("starting the encoder process again: %s", self._child.end_reason)
                self._child = _Child.start(self._workers, self._on_unexpected_end)
            return self._child


class RemoteLiveEncoder:
    """One job's LiveEncoder, in the encoder process (live_encoder.NarrationEncoder)."""

    def __init__(self, child: _Child, key: str, aac_path: Path) -> None:
        self._child = child
        self._key = key
        self.aac_path = aac_path

    def write_all(self, sounds: Sequence[WaitingSound], first_index: int, last_index: int) -> list[int]:
        counts: list[int] = self._child.call(
            "write_all", _pool_of_this_thread(), self._key, tuple(sounds), first_index, last_index
        )
        return counts

    def close(self) -> None:
        self._child.call("close", _pool_of_this_thread(), self._key)

    def abandon(self) -> None:
        # An encoder in a child that has ended has nothing left to close.
        with contextlib.suppress(EncoderProcessEndedError):
            self._child.call("abandon", _ASIDE, self._key)


def _pool_of_this_thread() -> str:
    return _BACKGROUND if runs_in_background() else _URGENT


class _Child:
    """One encoder process, and the requests it has not answered yet."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        receiving: Connection,
        sending: Connection,
        on_unexpected_end: Callable[[str], None] | None,
    ) -> None:
        self._process = process
        self._on_unexpected_end = on_unexpected_end
        self._receiving = receiving
        self._sending = sending
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, Future[Any]] = {_READY_ID: Future()}
        self._end_reason = ""
        # Why this process killed the child, if it did.
        self._kill_reason = ""
        self._is_stopping = False
        self._reader = threading.Thread(target=self._read_replies, name="encoder-replies", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, workers: int, on_unexpected_end: Callable[[str], None] | None = None) -> _Child:
        """A new child, ready to encode."""
        # Pipes made here are not inherited by anything else this process starts (FFmpeg, a voice), so the
        # child reads the end of its requests when this process closes its end or dies, and so does this
        # process of the child's replies.
        from_child, child_sends = os.pipe()
        child_receives, to_child = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(child_receives), str(child_sends), str(workers)],
                pass_fds=(child_receives, child_sends),
                stdin=subprocess.DEVNULL,
                cwd=_SOURCE_ROOT,
                env=_child_environment(os.environ),
            )
        except OSError as error:
            for end in (from_child, child_sends, child_receives, to_child):
                os.close(end)
            raise EncodingError("the encoder process could not start", detail=str(error)) from error
        os.close(child_receives)
        os.close(child_sends)
        child = cls(
            process,
            Connection(from_child, writable=False),
            Connection(to_child, readable=False),
            on_unexpected_end,
        )
        try:
            child._pending[_READY_ID].result(timeout=START_TIMEOUT_SECONDS)
        except TimeoutError as error:
            child.stop(0)
            message = f"the encoder process was not ready within {START_TIMEOUT_SECONDS:g} s"
            raise EncodingError(message) from error
        except BaseException:
            child.stop(0)
            raise
        return child

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def has_ended(self) -> bool:
        return bool(self._end_reason)

    @property
    def end_reason(self) -> str:
        return self._end_reason

    def call(self, operation: str, pool: str, *arguments: Any) -> Any:
        """Runs `operation` in the child and returns its result, or raises its error (as this process would
        have raised it: an OSError with its errno, an EncodingError)."""
        future: Future[Any] = Future()
        with self._lock:
            if self._end_reason:
                raise EncoderProcessEndedError(self._end_reason)
            request_id = next(self._ids)
            self._pending[request_id] = future
            request: _Request = (request_id, operation, pool, arguments)
            # A child that has gone cannot be sent to: the reader fails every pending request, this one too.
            with contextlib.suppress(OSError):
                self._sending.send(request)
        try:
            return future.result(timeout=ANSWER_TIMEOUT_SECONDS)
        except TimeoutError:
            self._kill(f"the encoder process did not answer within {ANSWER_TIMEOUT_SECONDS:g} s")
            # Failed by the reader once the child has ended, with the reason.
            return future.result()

    def stop(self, timeout_seconds: float) -> None:
        """Closes the child's requests (it ends once it has answered what it holds) and waits for it."""
        with self._lock:
            self._is_stopping = True
            self._sending.close()
        try:
            self._process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join()

    def _kill(self, reason: str) -> None:
        with self._lock:
            self._kill_reason = self._kill_reason or reason
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()

    def _read_replies(self) -> None:
        try:
            while True:
                try:
                    request_id, succeeded, value = plain_values(self._receiving.recv_bytes())
                    failure = None if succeeded else _raised(value)
                except (pickle.UnpicklingError, ValueError, TypeError) as error:
                    self._kill(f"the encoder process sent a reply that is not plain values ({error})")
                    return
                with self._lock:
                    future = self._pending.pop(request_id, None)
                if future is None:
                    continue
                if failure is None:
                    future.set_result(value)
                else:
                    future.set_exception(failure)
        except (EOFError, OSError):
            pass
        finally:
            self._receiving.close()
            self._ended()

    def _ended(self) -> None:
        status = self._process.poll()
        if status is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = self._process.wait(1.0)
        with self._lock:
            self._end_reason = self._kill_reason or f"the encoder process ended (exit status {status})"
            pending, self._pending = self._pending, {}
            is_stopping = self._is_stopping
        if not is_stopping:
            logger.error("%s with %d requests unanswered", self._end_reason, len(pending))
            if self._on_unexpected_end is not None:
                self._on_unexpected_end("unanswered" if self._kill_reason else "exited")
        for future in pending.values():
            future.set_exception(EncoderProcessEndedError(self._end_reason))


class _PlainValues(pickle.Unpickler):
    """Reads the child's replies, which are plain values only (ints, strings, lists, tuples, None): a reply
    cannot name a class or a function to call here, so a child taken over through what it encodes gains
    nothing in the media process, which holds the secrets."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not a plain value")


def plain_values(data: bytes) -> _Reply:
    """A reply from the child, read as plain values (see _PlainValues)."""
    request_id, succeeded, value = _PlainValues(io.BytesIO(data)).load()
    if not isinstance(request_id, int) or not isinstance(succeeded, bool):
        raise ValueError("a reply starts with its request's id and whether it succeeded")
    return request_id, succeeded, value


def _child_environment(environment: Mapping[str, str]) -> dict[str, str]:
    kept = {name: environment[name] for name in _KEPT_VARIABLES if name in environment}
    # The `services` package first, wherever the media process found it.
    path = [str(_SOURCE_ROOT), *filter(None, kept.get("PYTHONPATH", "").split(os.pathsep))]
    return kept | {"PYTHONPATH": os.pathsep.join(path)}


def _failure(error: BaseException) -> _Failure:
    """An error raised in the child, as plain values for the pipe."""
    if isinstance(error, OSError) and error.errno is not None:
        return ("os", error.strerror or str(error), "", error.errno)
    if isinstance(error, InvalidInputError):
        return ("invalid", error.field, error.problem, None)
    if isinstance(error, EncodingError):
        return ("encoding", str(error), error.detail, None)
    return ("other", "the encoder process failed", f"{type(error).__name__}: {error}", None)


def _raised(failure: _Failure) -> BaseException:
    """The error a failure from the child stands for, as this process raises it."""
    kind, message, detail, number = failure
    if kind == "os" and isinstance(number, int):
        return OSError(number, str(message))
    if kind == "invalid":
        return InvalidInputError(str(message), str(detail))
    return EncodingError(str(message), detail=str(detail))


# The child's side.


class _Encoders:
    """The child's encoders by key, and the pools they run in."""

    def __init__(self, sending: Connection, workers: int) -> None:
        self._sending = sending
        self._sending_lock = threading.Lock()
        self._encoders: dict[str, LiveEncoder] = {}
        self._pools = {
            _URGENT: ThreadPoolExecutor(workers, thread_name_prefix="encode-urgent"),
            _BACKGROUND: ThreadPoolExecutor(
                workers, thread_name_prefix="encode-background", initializer=yield_this_thread
            ),
            _ASIDE: ThreadPoolExecutor(workers, thread_name_prefix="encode-aside"),
            _STILLS: ThreadPoolExecutor(1, thread_name_prefix="encode-stills"),
        }
        self._operations: dict[str, Callable[..., Any]] = {
            "open": self._open,
            "write_all": self._write_all,
            "close": self._close,
            "abandon": self._abandon,
            "mux_still": self._mux_still,
            "narration_seconds": self._narration_seconds,
        }

    def take(self, request: _Request) -> None:
        request_id, operation, pool, arguments = request
        self._pools[pool].submit(self._answer, request_id, self._operations[operation], arguments)

    def reply(self, reply: _Reply) -> None:
        with self._sending_lock, contextlib.suppress(OSError):  # the media process is gone: nobody asks
            self._sending.send(reply)

    def shut_down(self) -> None:
        """Finishes the work taken, then closes every encoder still open (its narration was never ended)."""
        for pool in self._pools.values():
            pool.shutdown(wait=True)
        for encoder in self._encoders.values():
            encoder.abandon()

    def _answer(self, request_id: int, operation: Callable[..., Any], arguments: tuple[Any, ...]) -> None:
        try:
            reply: _Reply = (request_id, True, operation(*arguments))
        except BaseException as error:  # every failure goes back to the caller, whose job it ends
            reply = (request_id, False, _failure(error))
        self.reply(reply)

    def _open(self, key: str, work_dir: str, sample_rate: int) -> str:
        encoder = LiveEncoder(Path(work_dir), sample_rate)
        self._encoders[key] = encoder
        return str(encoder.aac_path)

    def _write_all(
        self, key: str, sounds: tuple[WaitingSound, ...], first_index: int, last_index: int
    ) -> list[int]:
        return self._encoder(key).write_all(sounds, first_index, last_index)

    def _close(self, key: str) -> None:
        self._encoder(key).close()
        self._encoders.pop(key, None)

    def _abandon(self, key: str) -> None:
        encoder = self._encoders.pop(key, None)
        if encoder is not None:
            encoder.abandon()

    def _mux_still(
        self,
        image_path: str | None,
        audio_path: str,
        subtitles_path: str | None,
        duration_seconds: float,
        output_path: str,
        profile: RenderProfile,
    ) -> tuple[int, int, float] | None:
        muxed = muxed_here(
            image_path=None if image_path is None else Path(image_path),
            audio_path=Path(audio_path),
            subtitles_path=None if subtitles_path is None else Path(subtitles_path),
            duration_seconds=duration_seconds,
            output_path=Path(output_path),
            profile=profile,
        )
        return None if muxed is None else (muxed.width_pixels, muxed.height_pixels, muxed.duration_seconds)

    def _narration_seconds(self, path: str) -> float:
        return narration_seconds(Path(path))

    def _encoder(self, key: str) -> LiveEncoder:
        encoder = self._encoders.get(key)
        if encoder is None:
            raise EncodingError("the live encoder was already closed")
        return encoder


def main(arguments: Sequence[str]) -> None:
    """The child: answers requests until the media process closes its end of the pipe, or ends."""
    receives, sends, workers = (int(argument) for argument in arguments)
    # Stopped by the media process, never by a signal meant for it (Ctrl-C reaches the whole process group):
    # work the media service drains on SIGTERM is encoded here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    receiving, sending = Connection(receives, writable=False), Connection(sends, readable=False)
    encoders = _Encoders(sending, workers)
    live_encoder.make_ready()
    live_encoder.make_quick_picture_ready()  # QUICK videos are muxed here (mux_still)
    encoders.reply((_READY_ID, True, os.getpid()))
    while True:
        try:
            request: _Request = receiving.recv()
        except (EOFError, OSError):
            break
        encoders.take(request)
    encoders.shut_down()


if __name__ == "__main__":
    main(sys.argv[1:])
