"""Plays media in a real headless Chromium and reports what the browser saw: duration, a frame, decoded sound.

No WebDriver: a stdlib HTTP server on 127.0.0.1 serves a test page and the media (with byte ranges, which
Chromium needs to seek in an MP4), Chromium opens the page with real time, the page's script plays the media
in a `<video>` and POSTs a JSON report back to the same server, and the browser's whole process group is
killed as soon as the report arrives (or at the timeout). One check takes about a second.

    report = play_in_chromium(Path("meditation.mp4"))
    assert report.error is None, report.error

`play_url` checks media another server publishes (an MP4 or, where this Chromium plays it, an HLS playlist).
With `subtitles_path`, the page loads a WebVTT file through a `<track>` and reports the cues Chromium parsed,
and those it shows after the seek to the middle (Chromium shows no text track from an MP4's own `mov_text`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final

DEFAULT_CHROMIUM: Final = "/usr/bin/chromium"
# The page and the report live under a prefix no media file is expected to use.
_CONTROL_PREFIX: Final = "/__playback__/"
_PAGE_PATH: Final = _CONTROL_PREFIX + "page.html"
_REPORT_PATH: Final = _CONTROL_PREFIX + "report"
_RANGE: Final = re.compile(r"^bytes=(\d*)-(\d*)$")
_COPY_CHUNK_BYTES: Final = 1 << 16
_MAX_REPORT_BYTES: Final = 1 << 20
_LOG_TAIL_CHARACTERS: Final = 2000
_POLL_SECONDS: Final = 0.05
# The page gives up this much before the Python timeout, so a stuck load is reported with the player's state.
_PAGE_TIMEOUT_MARGIN_SECONDS: Final = 1.5
_CONTENT_TYPES: Final = {
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".m4s": "video/iso.segment",
    ".webm": "video/webm",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".aac": "audio/aac",
    ".html": "text/html; charset=utf-8",
    ".vtt": "text/vtt; charset=utf-8",
}
# Headless, offline, quiet: no sandbox (tests run as root in containers), no GPU, nothing fetched from Google.
_CHROMIUM_FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--no-pings",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
    # A hidden, throttled renderer would delay timers and media; a test page must run at full speed.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--disable-features=Translate,MediaRouter,OptimizationHints,DialMediaRouteProvider",
)


class ChromiumUnavailableError(RuntimeError):
    """No Chromium binary where one was expected (`scripts/ensure-chromium.sh` installs it)."""


@dataclass(frozen=True)
class TextCue:
    """A subtitle cue as the browser parsed it."""

    start_seconds: float
    end_seconds: float
    # What a viewer reads: the cue's text as Chromium renders it (character references decoded, lines
    # kept), not the escaped source.
    text: str


@dataclass(frozen=True)
class PlaybackReport:
    """What Chromium saw. `error` is None only when every step worked; the other values are None when the
    step that measures them was not reached."""

    error: str | None
    # None for a live stream, which has no end yet.
    duration_seconds: float | None = None
    is_live: bool = False
    # The mean colour (0-255 sRGB) of the frame shown after seeking to the middle.
    middle_frame_mean_rgb: tuple[float, float, float] | None = None
    # Mean colours of the frame's quadrants in reading order (top left, top right, bottom left, bottom right):
    # they show the picture's layout survived, not only its average.
    middle_frame_quadrant_mean_rgb: tuple[tuple[float, float, float], ...] | None = None
    # The share of the frame's pixels that are almost black (all channels below 16).
    middle_frame_black_fraction: float | None = None
    width_pixels: int | None = None
    height_pixels: int | None = None
    # Where the player landed after seeking to duration / 2 (None for a live stream, which is not seeked).
    seeked_to_seconds: float | None = None
    # Bytes of compressed audio and video Chromium had decoded by the end of a short play from the middle.
    audio_decoded_bytes: int | None = None
    video_decoded_bytes: int | None = None
    played_seconds: float | None = None
    # The cues of the `<track>` (None without one), and the text of those shown after seeking to the middle.
    cues: tuple[TextCue, ...] | None = None
    active_cue_texts_at_middle: tuple[str, ...] | None = None
    # Wall time from starting Chromium to receiving the report.
    elapsed_seconds: float = 0.0


def chromium_path() -> str | None:
    """The Chromium binary tests use (`STILLPOINT_CHROMIUM` overrides /usr/bin/chromium), or None."""
    candidate = os.environ.get("STILLPOINT_CHROMIUM", DEFAULT_CHROMIUM)
    return shutil.which(candidate)


def chromium_version(chromium: str | None = None) -> str:
    """`Chromium 1xx.0.... built on Debian ...`; raises ChromiumUnavailableError when there is none."""
    binary = chromium or _require_chromium()
    completed = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    if completed.returncode != 0:
        raise ChromiumUnavailableError(f"{binary} --version failed: {completed.stderr.strip()[-500:]}")
    return completed.stdout.strip()


def play_in_chromium(
    video_path: Path,
    *,
    timeout_seconds: float = 30.0,
    chromium: str | None = None,
    subtitles_path: Path | None = None,
) -> PlaybackReport:
    """Serves `video_path`'s folder on 127.0.0.1 and plays the file (an MP4, or an HLS playlist with its
    segments beside it) in Chromium, with the WebVTT `subtitles_path` (in the same folder) as its `<track>`.
    Blocking: call it through `asyncio.to_thread` from async tests."""
    for path in (video_path, subtitles_path):
        if path is not None and not path.is_file():
            raise FileNotFoundError(path)
    if subtitles_path is not None and subtitles_path.parent.resolve() != video_path.parent.resolve():
        raise ValueError("the subtitles must sit beside the video: one folder is served")
    with MediaServer(video_path.parent) as server:
        return _play(
            server,
            server.url_for(video_path.name),
            timeout_seconds=timeout_seconds,
            chromium=chromium,
            track_url=server.url_for(subtitles_path.name) if subtitles_path else None,
        )


def play_url(url: str, *, timeout_seconds: float = 30.0, chromium: str | None = None) -> PlaybackReport:
    """Plays media another server publishes. The test page comes from a local server of its own, so the
    media is cross-origin: the browser runs without web security to read its frame without CORS headers."""
    with MediaServer(None) as server:
        return _play(
            server,
            url,
            timeout_seconds=timeout_seconds,
            chromium=chromium,
            extra_flags=("--disable-web-security",),
        )


class BrowserPlayback:
    """Reuses one local server for several checks of files under `root`; checks may run in parallel threads
    (each starts its own Chromium)."""

    def __init__(self, root: Path, *, chromium: str | None = None) -> None:
        self._server = MediaServer(root)
        self._chromium = chromium

    def __enter__(self) -> BrowserPlayback:
        self._server.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.__exit__(exc_type, exc_value, traceback)

    def play(self, relative_path: str, *, timeout_seconds: float = 30.0) -> PlaybackReport:
        return _play(
            self._server,
            self._server.url_for(relative_path),
            timeout_seconds=timeout_seconds,
            chromium=self._chromium,
        )


def _require_chromium() -> str:
    binary = chromium_path()
    if binary is None:
        raise ChromiumUnavailableError(
            f"no Chromium at {os.environ.get('STILLPOINT_CHROMIUM', DEFAULT_CHROMIUM)}: "
            "run `bash scripts/ensure-chromium.sh` (apt-get install chromium)"
        )
    return binary


def _play(
    server: MediaServer,
    media_url: str,
    *,
    timeout_seconds: float,
    chromium: str | None,
    extra_flags: tuple[str, ...] = (),
    track_url: str | None = None,
) -> PlaybackReport:
    binary = chromium or _require_chromium()
    page_timeout_ms = max(1000, round((timeout_seconds - _PAGE_TIMEOUT_MARGIN_SECONDS) * 1000))
    # Each check starts with a clean slate in its own profile: no cache shared between checks.
    with tempfile.TemporaryDirectory(prefix="stillpoint-chromium-") as profile, server.mailbox() as mailbox:
        parameters = {"src": media_url, "timeout_ms": str(page_timeout_ms), "token": mailbox.token}
        if track_url is not None:
            parameters["track"] = track_url
        query = urllib.parse.urlencode(parameters)
        page_url = f"{server.url}{_PAGE_PATH}?{query}"
        log_path = Path(profile) / "chromium.log"
        started = time.monotonic()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    *_CHROMIUM_FLAGS,
                    *extra_flags,
                    f"--user-data-dir={Path(profile) / 'profile'}",
                    page_url,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: the zygote, renderer and utility processes die with the browser.
                start_new_session=True,
            )
            try:
                payload, failure = _await_report(mailbox, process, started + timeout_seconds)
            finally:
                _kill_process_group(process)
        elapsed = time.monotonic() - started
        if payload is None:
            log_tail = log_path.read_text(encoding="utf-8", errors="replace")[-_LOG_TAIL_CHARACTERS:]
            return PlaybackReport(
                error=f"{failure}; Chromium's log ends: {log_tail.strip() or '(empty)'}",
                elapsed_seconds=elapsed,
            )
    return _report_from(payload, elapsed)


def _await_report(
    mailbox: _Mailbox, process: subprocess.Popen[bytes], deadline: float
) -> tuple[dict[str, Any] | None, str]:
    while True:
        payload = mailbox.wait(_POLL_SECONDS)
        if payload is not None:
            return payload, ""
        return_code = process.poll()
        if return_code is not None:
            # The report may have landed just as the browser quit.
            payload = mailbox.wait(0.2)
            if payload is not None:
                return payload, ""
            return None, f"Chromium exited with status {return_code} before the page reported"
        if time.monotonic() >= deadline:
            return None, "no report from the page before the timeout"


def _kill_process_group(process: subprocess.Popen[bytes]) -> None:
    # SIGKILL at once: the profile is thrown away, so nothing needs a clean shutdown.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def _report_from(payload: dict[str, Any], elapsed: float) -> PlaybackReport:
    def number(key: str) -> float | None:
        value = payload.get(key)
        return float(value) if isinstance(value, int | float) else None

    def integer(key: str) -> int | None:
        value = payload.get(key)
        return int(value) if isinstance(value, int | float) else None

    def colour(value: object) -> tuple[float, float, float] | None:
        if isinstance(value, list) and len(value) == 3:
            return (float(value[0]), float(value[1]), float(value[2]))
        return None

    quadrants_raw = payload.get("quadrantMeanRgb")
    quadrants = None
    if isinstance(quadrants_raw, list):
        parsed = [colour(value) for value in quadrants_raw]
        quadrants = tuple(value for value in parsed if value is not None) or None
    cues_raw = payload.get("cues")
    cues = None
    if isinstance(cues_raw, list):
        cues = tuple(
            TextCue(float(cue[0]), float(cue[1]), str(cue[2]))
            for cue in cues_raw
            if isinstance(cue, list) and len(cue) == 3
        )
    active_raw = payload.get("activeCueTextsAtMiddle")
    active = tuple(str(text) for text in active_raw) if isinstance(active_raw, list) else None
    error = payload.get("error")
    return PlaybackReport(
        error=str(error) if error is not None else None,
        duration_seconds=number("durationSeconds"),
        is_live=payload.get("isLive") is True,
        middle_frame_mean_rgb=colour(payload.get("meanRgb")),
        middle_frame_quadrant_mean_rgb=quadrants,
        middle_frame_black_fraction=number("blackFraction"),
        width_pixels=integer("widthPixels"),
        height_pixels=integer("heightPixels"),
        seeked_to_seconds=number("seekedToSeconds"),
        audio_decoded_bytes=integer("audioDecodedBytes"),
        video_decoded_bytes=integer("videoDecodedBytes"),
        played_seconds=number("playedSeconds"),
        cues=cues,
        active_cue_texts_at_middle=active,
        elapsed_seconds=elapsed,
    )


class _Mailbox:
    """Receives the one report a page posts; the page names it by its token."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)
        self._arrived = threading.Event()
        self._payload: dict[str, Any] | None = None

    def deliver(self, payload: dict[str, Any]) -> None:
        if not self._arrived.is_set():
            self._payload = payload
            self._arrived.set()

    def wait(self, timeout_seconds: float) -> dict[str, Any] | None:
        self._arrived.wait(timeout_seconds)
        return self._payload


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Drops the resets of a browser killed mid-request; anything else is still printed."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            return
        super().handle_error(request, client_address)


class MediaServer:
    """A threaded HTTP server on 127.0.0.1:0: files under `root` (GET and HEAD, single byte ranges), the test
    page, and the endpoint the page posts its report to."""

    def __init__(self, root: Path | None) -> None:
        self.root = root.resolve() if root is not None else None
        self._mailboxes: dict[str, _Mailbox] = {}
        self._mailboxes_lock = threading.Lock()
        handler = _handler_class(self)
        self._http = _QuietHTTPServer(("127.0.0.1", 0), handler)
        # A short poll interval: shutdown() waits for it, once per check.
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.05,), name="media-server", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def url_for(self, relative_path: str) -> str:
        return f"{self.url}/{urllib.parse.quote(relative_path)}"

    @contextlib.contextmanager
    def mailbox(self) -> Iterator[_Mailbox]:
        """A mailbox of its own for one page, so checks can run side by side and a late report from an
        earlier page is never mistaken for this one's."""
        mailbox = _Mailbox()
        with self._mailboxes_lock:
            self._mailboxes[mailbox.token] = mailbox
        try:
            yield mailbox
        finally:
            with self._mailboxes_lock:
                del self._mailboxes[mailbox.token]

    def deliver(self, token: str, payload: dict[str, Any]) -> bool:
        with self._mailboxes_lock:
            mailbox = self._mailboxes.get(token)
        if mailbox is None:
            return False
        mailbox.deliver(payload)
        return True

    def __enter__(self) -> MediaServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)


def _handler_class(server: MediaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: Chromium's many range requests would flood the test output."""

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def do_POST(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            token = urllib.parse.parse_qs(url.query).get("token", [""])[0]
            length = int(self.headers.get("Content-Length") or 0)
            if url.path != _REPORT_PATH or not 0 < length <= _MAX_REPORT_BYTES:
                self.close_connection = True  # the body stays unread
                self._send_empty(HTTPStatus.NOT_FOUND)
                return
            try:
                payload = json.loads(self.rfile.read(length))
            except ValueError:
                self._send_empty(HTTPStatus.BAD_REQUEST)
                return
            if not isinstance(payload, dict):
                payload = {"error": f"the page reported a non-object: {payload!r}"}
            is_delivered = server.deliver(token, payload)
            self._send_empty(HTTPStatus.NO_CONTENT if is_delivered else HTTPStatus.NOT_FOUND)

        def _serve(self, *, send_body: bool) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            if path == _PAGE_PATH:
                self._send_bytes(_PAGE.encode("utf-8"), _CONTENT_TYPES[".html"], send_body=send_body)
                return
            file_path = self._resolve(path)
            if file_path is None:
                self._send_empty(HTTPStatus.NOT_FOUND)
                return
            self._send_file(file_path, send_body=send_body)

        def _resolve(self, path: str) -> Path | None:
            if server.root is None or path.startswith(_CONTROL_PREFIX):
                return None
            candidate = (server.root / path.lstrip("/")).resolve()
            if not candidate.is_relative_to(server.root) or not candidate.is_file():
                return None
            return candidate

        def _send_file(self, file_path: Path, *, send_body: bool) -> None:
            size = file_path.stat().st_size
            content_type = _CONTENT_TYPES.get(file_path.suffix.lower(), "application/octet-stream")
            start, end = 0, size - 1
            status = HTTPStatus.OK
            range_header = self.headers.get("Range")
            if range_header is not None:
                byte_range = _parse_range(range_header, size)
                if byte_range is None:
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = byte_range
                status = HTTPStatus.PARTIAL_CONTENT
            length = max(0, end - start + 1)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Access-Control-Allow-Origin", "*")
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not send_body:
                return
            # Chromium routinely abandons a range request half-way once it has what it needs.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError), file_path.open("rb") as file:
                file.seek(start)
                remaining = length
                while remaining > 0:
                    chunk = file.read(min(_COPY_CHUNK_BYTES, remaining))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)

        def _send_bytes(self, body: bytes, content_type: str, *, send_body: bool) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _send_empty(self, status: HTTPStatus) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=` range as inclusive offsets, or None when it cannot be satisfied (RFC 9110 §14.1.2)."""
    match = _RANGE.match(header.strip())
    if match is None or size == 0:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        suffix = int(last)
        return (max(0, size - suffix), size - 1) if suffix > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end


# The page: load, check duration, seek to the middle, read the frame there, play briefly to prove the sound
# and picture decode, and post everything back. Every step reports where it stopped on failure.
_PAGE: Final = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>playback check</title></head>
<body>
<script>
"use strict";
const params = new URLSearchParams(location.search);
const source = params.get("src");
const timeoutMs = Number(params.get("timeout_ms") || "20000");
const result = {step: "start"};
const FRAME_WAIT_MS = 2000;
let finished = false;

function send(extra) {
  if (finished) return;
  finished = true;
  Object.assign(result, extra);
  fetch("/__playback__/report?token=" + encodeURIComponent(params.get("token") || ""), {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify(result),
  });
}

function mediaError(video) {
  const error = video.error;
  if (!error) return null;
  return `MediaError code ${error.code}: ${error.message || "(no message)"}`;
}

function playerState(video) {
  return `readyState ${video.readyState}, networkState ${video.networkState}, ` +
    `currentTime ${video.currentTime}, duration ${video.duration}`;
}

// Waits for one event or the element's error; the page-wide timer bounds every wait.
function once(video, name) {
  return new Promise((resolve, reject) => {
    const done = (handler) => (event) => {
      video.removeEventListener(name, onEvent);
      video.removeEventListener("error", onError);
      handler(event);
    };
    const onEvent = done(resolve);
    const onError = done(() => reject(new Error(mediaError(video) || "the video element fired error")));
    video.addEventListener(name, onEvent);
    video.addEventListener("error", onError);
  });
}

// Spaces the checks of a poll that has its own deadline; never a wait for something to happen.
function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

function measureFrame(video) {
  const width = video.videoWidth, height = video.videoHeight;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d", {willReadFrequently: true});
  context.drawImage(video, 0, 0, width, height);
  const data = context.getImageData(0, 0, width, height).data;
  const total = [0, 0, 0];
  const quadrants = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]];
  let black = 0, transparent = 0;
  const halfWidth = Math.floor(width / 2), halfHeight = Math.floor(height / 2);
  for (let y = 0; y < height; y++) {
    const row = y < halfHeight ? 0 : 2;
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 4;
      const r = data[i], g = data[i + 1], b = data[i + 2];
      total[0] += r; total[1] += g; total[2] += b;
      const q = quadrants[row + (x < halfWidth ? 0 : 1)];
      q[0] += r; q[1] += g; q[2] += b; q[3] += 1;
      if (r < 16 && g < 16 && b < 16) black++;
      if (data[i + 3] === 0) transparent++;
    }
  }
  const pixels = width * height;
  // drawImage draws nothing (transparent pixels) while the player holds no decoded frame.
  if (transparent === pixels) return null;
  return {
    meanRgb: total.map((sum) => sum / pixels),
    quadrantMeanRgb: quadrants.map((q) => [q[0] / q[3], q[1] / q[3], q[2] / q[3]]),
    blackFraction: black / pixels,
  };
}

const video = document.createElement("video");
video.preload = "auto";
video.playsInline = true;
// Subtitles as a web page shows them: a <track> of WebVTT, shown by default.
const trackSource = params.get("track");
const trackElement = trackSource ? document.createElement("track") : null;
if (trackElement) {
  trackElement.kind = "subtitles";
  trackElement.srclang = "en";
  trackElement.label = "English";
  trackElement.default = true;
  trackElement.src = trackSource;
  video.appendChild(trackElement);
}
document.body.appendChild(video);

// A cue's text as rendered: getCueAsHTML decodes `&amp;` and friends; a tag it made (from a `<` left
// unescaped) is reported as `<TAG>`, so it cannot pass for the plain text.
function shown(cue) {
  const part = (node) => node.nodeType === Node.TEXT_NODE ? node.data : `<${node.nodeName}>`;
  return Array.from(cue.getCueAsHTML().childNodes, part).join("");
}

async function readTrack() {
  result.step = "track";
  if (trackElement.readyState !== HTMLTrackElement.LOADED) {
    await new Promise((resolve, reject) => {
      const failed = () => reject(new Error("the <track> failed to load"));
      if (trackElement.readyState === HTMLTrackElement.ERROR) failed();
      trackElement.addEventListener("load", resolve, {once: true});
      trackElement.addEventListener("error", failed, {once: true});
    });
  }
  const cues = trackElement.track.cues;
  result.cues = Array.from(cues || [], (cue) => [cue.startTime, cue.endTime, shown(cue)]);
}

// The cues the player shows now; `activeCues` follows the playback position once the seek has settled.
async function readActiveCues() {
  result.step = "activeCues";
  const track = trackElement.track;
  const waitStarted = performance.now();
  while ((!track.activeCues || track.activeCues.length === 0) && performance.now() - waitStarted < 1000) {
    await sleep(20);
  }
  result.activeCueTextsAtMiddle = Array.from(track.activeCues || [], shown);
}

// Plays from where the player stands for about 0.3 s: proves the sound and the picture decode, not only load.
async function playBriefly() {
  result.step = "play";
  const before = video.currentTime;
  await video.play();
  const playStarted = performance.now();
  while (video.currentTime - before < 0.3 && performance.now() - playStarted < 3000) {
    if (video.error) throw new Error(mediaError(video));
    await sleep(20);
  }
  video.pause();
  result.playedSeconds = video.currentTime - before;
  result.audioDecodedBytes = video.webkitAudioDecodedByteCount;
  result.videoDecodedBytes = video.webkitVideoDecodedByteCount;
  if (result.playedSeconds <= 0) throw new Error("playback did not advance");
}

async function readFrame() {
  if (video.readyState < HTMLMediaElement.HAVE_CURRENT_DATA) {
    result.step = "loadeddata";
    await once(video, "loadeddata");
  }
  result.step = "frame";
  // `seeked` can fire a moment before the frame at the new position reaches the compositor.
  const waitStarted = performance.now();
  let measured = measureFrame(video);
  while (measured === null && performance.now() - waitStarted < FRAME_WAIT_MS) {
    await Promise.race([
      new Promise((resolve) => video.requestVideoFrameCallback(resolve)),
      sleep(50),
    ]);
    measured = measureFrame(video);
  }
  if (measured === null) {
    throw new Error(`the player had no decoded frame to draw within ${FRAME_WAIT_MS} ms`);
  }
  result.frameWaitMs = performance.now() - waitStarted;
  Object.assign(result, measured);
}

async function check() {
  result.canPlayMp4 = video.canPlayType('video/mp4; codecs="avc1.640028, mp4a.40.2"');
  result.canPlayHls = video.canPlayType("application/vnd.apple.mpegurl");
  const sourcePath = new URL(source, location.href).pathname;
  if (/\.m3u8$/i.test(sourcePath) && !result.canPlayHls) {
    throw new Error("this Chromium has no built-in HLS player (an HLS check would need hls.js vendored)");
  }
  if (/\.mp4$/i.test(sourcePath) && !result.canPlayMp4) {
    throw new Error("this Chromium cannot play H.264/AAC in MP4 (a build without proprietary codecs)");
  }
  const loaded = once(video, "loadedmetadata");
  video.src = source;
  result.step = "loadedmetadata";
  await loaded;
  result.isLive = !Number.isFinite(video.duration);
  result.durationSeconds = result.isLive ? null : video.duration;
  result.widthPixels = video.videoWidth;
  result.heightPixels = video.videoHeight;
  if (!video.videoWidth || !video.videoHeight) throw new Error("the media has no picture");
  if (result.isLive) {
    // A live stream starts near its live edge and has no middle: read the frame it plays.
    await playBriefly();
    await readFrame();
  } else {
    if (trackElement) await readTrack();
    result.step = "seeked";
    const seeked = once(video, "seeked");
    video.currentTime = video.duration / 2;
    await seeked;
    result.seekedToSeconds = video.currentTime;
    if (trackElement) await readActiveCues();
    await readFrame();
    await playBriefly();
  }
  result.step = "done";
}

setTimeout(() => send({error: `timed out at step ${result.step} (${playerState(video)})`}), timeoutMs);
check().then(() => send({error: null}), (error) => send({
  error: `failed at step ${result.step}: ${error && error.message ? error.message : error}`,
}));
</script>
</body></html>
"""
