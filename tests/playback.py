"""Plays media in a real headless Chromium and reports what the browser saw: duration, a frame, decoded sound.

One Chromium (started through `tests.chromium`, as every browser test starts it) serves a whole test module;
each check gets a fresh browser context, so no cache or state passes from one check to the next. The media's
folder is served on 127.0.0.1 by aiohttp (whose static files answer byte ranges, which Chromium needs to seek
in an MP4), a blank page is opened on the same origin (so the page may read the frame's pixels), and a script
evaluated there plays the media in a `<video>` and returns its findings.

    player = ChromiumPlayer()  # once per module: starting Chromium is the slow part
    report = await player.play(Path("meditation.mp4"))
    assert report.error is None, report.error
    player.close()

The file may be an MP4 or an HLS playlist with its segments beside it. With `subtitles_path`, the page loads
a WebVTT file through a `<track>` and reports the cues Chromium parsed, and those it shows after the seek to
the middle (Chromium shows no text track from an MP4's own `mov_text`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from playwright.sync_api import Browser, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.chromium import launch_chromium

MEDIA_PREFIX: Final = "/media"
# The page gives up this much before the caller's timeout, so a stuck load is reported with the player's
# state rather than as a bare timeout.
_PAGE_TIMEOUT_MARGIN_SECONDS: Final = 1.5
_BLANK_PAGE: Final = (
    '<!doctype html><html><head><meta charset="utf-8"><title>playback check</title></head></html>'
)


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
    # Wall time from opening the page to its report.
    elapsed_seconds: float = 0.0


@contextlib.asynccontextmanager
async def serving(folder: Path) -> AsyncIterator[str]:
    """Serves `folder` under MEDIA_PREFIX, and the blank check page at `/`, on 127.0.0.1 from the running
    event loop; yields the origin (`http://127.0.0.1:PORT`)."""

    async def blank_page(_: web.Request) -> web.Response:
        return web.Response(text=_BLANK_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", blank_page)
    app.router.add_static(MEDIA_PREFIX, folder.resolve())
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class ChromiumPlayer:
    """Plays files in one shared Chromium. Playwright's sync API is bound to the thread that started it, and
    async tests must not block their event loop (it serves the media), so every browser call runs on one
    thread of the player's own; checks from several tests queue there, one at a time."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium-player")
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        try:
            self._thread.submit(self._start).result()
        except BaseException:
            self.close()
            raise

    async def play(
        self, video_path: Path, *, subtitles_path: Path | None = None, timeout_seconds: float = 30.0
    ) -> PlaybackReport:
        """Plays `video_path` (an MP4, or an HLS playlist with its segments beside it) with the WebVTT
        `subtitles_path` (in the same folder, as a web page's media would be) as its `<track>`."""
        for path in (video_path, subtitles_path):
            if path is not None and not path.is_file():
                raise FileNotFoundError(path)
        if subtitles_path is not None and subtitles_path.parent.resolve() != video_path.parent.resolve():
            raise ValueError("the subtitles must sit beside the video: one folder is served")
        async with serving(video_path.parent) as origin:
            media_url = f"{origin}{MEDIA_PREFIX}/{urllib.parse.quote(video_path.name)}"
            track_url = (
                f"{origin}{MEDIA_PREFIX}/{urllib.parse.quote(subtitles_path.name)}"
                if subtitles_path
                else None
            )
            check = self._thread.submit(self._check, origin, media_url, track_url, timeout_seconds)
            try:
                # The page's own timer answers first; this bounds a renderer too stuck to run it.
                return await asyncio.wait_for(asyncio.wrap_future(check), timeout_seconds)
            except TimeoutError:
                return PlaybackReport(
                    error=f"no answer from Chromium within {timeout_seconds} s",
                    elapsed_seconds=timeout_seconds,
                )

    def close(self) -> None:
        """Closes the browser and stops Playwright's driver (on the thread that started them)."""
        self._thread.submit(self._stop).result()
        self._thread.shutdown()

    def _start(self) -> None:
        self._playwright = sync_playwright().start()
        self._browser = launch_chromium(self._playwright)

    def _stop(self) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._playwright is not None:
            self._playwright.stop()

    def _check(
        self, origin: str, media_url: str, track_url: str | None, timeout_seconds: float
    ) -> PlaybackReport:
        assert self._browser is not None, "the player is closed"
        page_timeout_ms = max(1000, round((timeout_seconds - _PAGE_TIMEOUT_MARGIN_SECONDS) * 1000))
        started = time.monotonic()
        context = self._browser.new_context()
        try:
            page = context.new_page()
            page.goto(origin + "/", timeout=timeout_seconds * 1000)
            payload = page.evaluate(
                _CHECK, {"source": media_url, "trackSource": track_url, "timeoutMs": page_timeout_ms}
            )
        except PlaywrightError as error:
            # A crashed renderer or a page that never loaded: a failed check, reported like any other.
            return PlaybackReport(error=f"Playwright: {error}", elapsed_seconds=time.monotonic() - started)
        finally:
            context.close()
        return _report_from(payload, time.monotonic() - started)


def _report_from(payload: dict[str, Any], elapsed: float) -> PlaybackReport:
    def number(key: str) -> float | None:
        value = payload.get(key)
        return float(value) if isinstance(value, int | float) else None

    def integer(key: str) -> int | None:
        value = payload.get(key)
        return int(value) if isinstance(value, int | float) else None

    def colour(value: list[float]) -> tuple[float, float, float]:
        red, green, blue = value
        return (float(red), float(green), float(blue))

    quadrants = payload.get("quadrantMeanRgb")
    cues = payload.get("cues")
    active = payload.get("activeCueTextsAtMiddle")
    error = payload.get("error")
    return PlaybackReport(
        error=str(error) if error is not None else None,
        duration_seconds=number("durationSeconds"),
        is_live=payload.get("isLive") is True,
        middle_frame_mean_rgb=colour(payload["meanRgb"]) if "meanRgb" in payload else None,
        middle_frame_quadrant_mean_rgb=tuple(map(colour, quadrants)) if quadrants is not None else None,
        middle_frame_black_fraction=number("blackFraction"),
        width_pixels=integer("widthPixels"),
        height_pixels=integer("heightPixels"),
        seeked_to_seconds=number("seekedToSeconds"),
        audio_decoded_bytes=integer("audioDecodedBytes"),
        video_decoded_bytes=integer("videoDecodedBytes"),
        played_seconds=number("playedSeconds"),
        cues=tuple(TextCue(float(start), float(end), str(text)) for start, end, text in cues)
        if cues is not None
        else None,
        active_cue_texts_at_middle=tuple(map(str, active)) if active is not None else None,
        elapsed_seconds=elapsed,
    )


# The check, evaluated in the blank page: load, check duration, seek to the middle, read the frame there, play
# briefly to prove the sound and picture decode, and return everything. Every step reports where it stopped on
# failure, and the page's own timer returns what it has (with the player's state) before the caller gives up.
_CHECK: Final = r"""async ({source, trackSource, timeoutMs}) => {
const result = {step: "start"};
const FRAME_WAIT_MS = 2000;

function mediaError(video) {
  const error = video.error;
  if (!error) return null;
  return `MediaError code ${error.code}: ${error.message || "(no message)"}`;
}

function playerState(video) {
  return `readyState ${video.readyState}, networkState ${video.networkState}, ` +
    `currentTime ${video.currentTime}, duration ${video.duration}`;
}

// Waits for one event or the element's error; the check's timer bounds every wait.
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

// Whichever comes first, the end of the check or the timer, is the answer; a copy, so that a check still
// running after the timer cannot change it.
return await new Promise((resolve) => {
  const timer = setTimeout(
    () => resolve({...result, error: `timed out at step ${result.step} (${playerState(video)})`}),
    timeoutMs,
  );
  check().then(
    () => { clearTimeout(timer); resolve({...result, error: null}); },
    (error) => {
      clearTimeout(timer);
      const message = error && error.message ? error.message : error;
      resolve({...result, error: `failed at step ${result.step}: ${message}`});
    },
  );
});
}"""
