"""`python -m bench.narration`: how fast the offline neural voice speaks on this machine, and how soon the
live preview of a job can be played.

Written to OUTPUT/narration.{json,md}, never compared with a threshold:
- loading the Piper voice (once per process, at the media service's start-up);
- the real-time factor (seconds of synthesis per second of speech) of each sentence of the example
  conversation's meditation, spoken one at a time, and of the whole script spoken as a live narration
  speaks it (two sentences at once, on the shared pool);
- the mastering of each sentence (services/media/loudness.py);
- through a real in-process media server: from the NarrateLive request to the first sentence spoken,
  and to the live playlist being playable (`playlist_ready`), as the gateway sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import imageio_ffmpeg
import numpy as np

from bench.percentiles import summarize
from services import serving
from services.content.script_composer import compose_meditation
from services.media.encoders import EncoderSelection
from services.media.live import SpokenSegment
from services.media.loudness import master_speech
from services.media.piper_speech import PiperNarrator, load_voice, packaged_voice
from services.media.servicer import MediaServicer
from services.media.studio import MediaStudio
from services.sentences import split_sentences
from services.storage.local import LocalAssetStorage
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc

EXAMPLE_CONVERSATION = Path(__file__).resolve().parent.parent / "examples" / "conversation.json"
DEFAULT_LIVE_RUNS = 5
MEDITATION = "meditations/0123456789abcdef"
# As the gateway streams a composed script: a few words at a time, as a model writes them.
_CHARACTERS_PER_MESSAGE = 24


@dataclass(frozen=True)
class NarrationBenchSettings:
    """How many live narrations to time, how many of the script's sentences to speak, and where the report
    goes."""

    live_runs: int = DEFAULT_LIVE_RUNS
    max_sentences: int | None = None
    output_dir: Path = Path("var/bench")


def example_script() -> str:
    """The offline composer's meditation for the example conversation, as `make demo` narrates it."""
    conversation = json.loads(EXAMPLE_CONVERSATION.read_text(encoding="utf-8"))
    return compose_meditation("\n".join(f"User: {message['text']}" for message in conversation["messages"]))


async def sentence_by_sentence(narrator: PiperNarrator, sentences: Sequence[str]) -> list[dict[str, float]]:
    """Each sentence spoken alone, one after another: its synthesis time, speech and mastering."""
    rows = []
    for sentence in sentences:
        started = time.perf_counter()
        narration = await narrator.narrate(sentence)
        synthesis = time.perf_counter() - started
        samples = np.frombuffer(narration.pcm_s16le, dtype="<i2").astype(np.int16)
        started = time.perf_counter()
        await asyncio.to_thread(master_speech, samples, narration.sample_rate_hertz)
        rows.append(
            {
                "synthesis_seconds": synthesis,
                "audio_seconds": narration.duration_seconds,
                "mastering_seconds": time.perf_counter() - started,
            }
        )
    return rows


async def whole_script(narrator: PiperNarrator, sentences: Sequence[str]) -> dict[str, float]:
    """Every sentence started at once, as a live narration hands them over: the pool speaks two at a time."""
    started = time.perf_counter()
    narrations = await asyncio.gather(*(narrator.narrate(sentence) for sentence in sentences))
    wall = time.perf_counter() - started
    audio = sum(narration.duration_seconds for narration in narrations)
    return {"wall_seconds": wall, "audio_seconds": audio, "real_time_factor": wall / audio}


async def _requests(script: str, started: list[float]) -> AsyncIterator[media_pb.NarrateLiveRequest]:
    started.append(time.perf_counter())
    yield media_pb.NarrateLiveRequest(start=media_pb.NarrateLiveStart(meditation=MEDITATION))
    for start in range(0, len(script), _CHARACTERS_PER_MESSAGE):
        yield media_pb.NarrateLiveRequest(
            text=media_pb.NarrateLiveText(text=script[start : start + _CHARACTERS_PER_MESSAGE])
        )
    yield media_pb.NarrateLiveRequest(end=media_pb.NarrateLiveEnd())


class _TimedStudio(MediaStudio):
    """The real studio, noting when each sentence's speech is ready (its mastering follows)."""

    def __init__(self, **keywords: Any) -> None:
        super().__init__(**keywords)
        self.spoken_at: list[float] = []

    async def speak(self, script: str) -> SpokenSegment:
        spoken = await super().speak(script)
        self.spoken_at.append(time.perf_counter())
        return spoken


async def live_preview(script: str, runs: int) -> dict[str, Any]:
    """NarrateLive through a real in-process media server: request to first sentence, to playable."""
    first_spoken: list[float] = []
    playable: list[float] = []
    completed: list[float] = []
    with tempfile.TemporaryDirectory(prefix="stillpoint-bench-narration-") as scratch:
        root = Path(scratch)
        narrator = PiperNarrator(packaged_voice())
        await narrator.ready()
        studio = _TimedStudio(
            narrator=narrator,
            narrator_name="piper",
            storage=LocalAssetStorage(root / "storage"),
            ffmpeg_path=imageio_ffmpeg.get_ffmpeg_exe(),
            encoders=EncoderSelection(selected="libx264", probes=("not probed in the bench",)),
            work_root=root,
            video_timeout_seconds=120,
        )
        running = await serving.start_server(
            service_names=["stillpoint.media.v2.MediaService"],
            register=lambda server: media_grpc.add_MediaServiceServicer_to_server(
                MediaServicer(studio), server
            ),
            address="127.0.0.1:0",
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = media_grpc.MediaServiceStub(channel)
                for _ in range(runs):
                    studio.spoken_at.clear()
                    started: list[float] = []
                    async for response in stub.NarrateLive(_requests(script, started), timeout=300):
                        now = time.perf_counter()
                        if response.WhichOneof("event") == "playlist_ready":
                            playable.append(now - started[0])
                        elif response.WhichOneof("event") == "completed":
                            completed.append(now - started[0])
                    first_spoken.append(min(studio.spoken_at) - started[0])
        finally:
            await running.stop(0)
            narrator.close()
    return {
        "runs": runs,
        "first_sentence_spoken_seconds": summarize(first_spoken),
        "playlist_ready_seconds": summarize(playable),
        "narration_completed_seconds": summarize(completed),
    }


async def run_narration_bench(settings: NarrationBenchSettings) -> dict[str, Any]:
    """Measures everything, writes the report and returns it."""
    started = time.perf_counter()
    sentences = split_sentences(example_script())[: settings.max_sentences]
    files = packaged_voice()
    # In a fresh process (`python -m bench.narration`) this is the cold load the service's start-up makes.
    load_started = time.perf_counter()
    await asyncio.to_thread(load_voice, files)
    load_seconds = time.perf_counter() - load_started
    narrator = PiperNarrator(files)
    try:
        await narrator.narrate("Warm up.")  # ONNX Runtime's first run plans its memory
        rows = await sentence_by_sentence(narrator, sentences)
        concurrent = await whole_script(narrator, sentences)
    finally:
        narrator.close()
    synthesis = sum(row["synthesis_seconds"] for row in rows)
    audio = sum(row["audio_seconds"] for row in rows)
    report = {
        "voice": files.name,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "sentences": len(rows),
        "words": sum(len(sentence.split()) for sentence in sentences),
        "voice_load_seconds": load_seconds,
        "one_at_a_time": {
            "synthesis_seconds": synthesis,
            "audio_seconds": audio,
            "real_time_factor": synthesis / audio,
            "sentence_real_time_factor": summarize(
                [row["synthesis_seconds"] / row["audio_seconds"] for row in rows]
            ),
            "first_sentence_synthesis_seconds": rows[0]["synthesis_seconds"],
            "mastering_real_time_factor": sum(row["mastering_seconds"] for row in rows) / audio,
        },
        "two_at_a_time": concurrent,
        "live_preview": await live_preview(" ".join(sentences), settings.live_runs),
        "wall_seconds": time.perf_counter() - started,
    }
    write_report(report, settings.output_dir)
    return report


def write_report(report: Mapping[str, Any], output_dir: Path) -> None:
    """OUTPUT/narration.json (stable, for machines) and OUTPUT/narration.md (for people)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "narration.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (output_dir / "narration.md").write_text(render_markdown(report))


def render_markdown(report: Mapping[str, Any]) -> str:
    """One table of the voice's speed and one of the live preview's latency."""
    alone = report["one_at_a_time"]
    pair = report["two_at_a_time"]
    live = report["live_preview"]
    per_sentence = alone["sentence_real_time_factor"]

    def latency(name: str) -> str:
        values = live[name]
        return f"{values['p50']:.2f} | {values['max']:.2f}"

    lines = [
        f"# Offline narration: Piper {report['voice']}",
        "",
        f"{report['sentences']} sentences ({report['words']} words) of the example conversation's "
        f"meditation, {report['machine']['cpus']} CPUs (load average "
        f"{report['machine']['load_average'][0]:.1f} at the start).",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| voice load (once per process) | {report['voice_load_seconds']:.2f} s |",
        f"| speech spoken | {alone['audio_seconds']:.1f} s |",
        f"| real-time factor, one sentence at a time | {alone['real_time_factor']:.3f} |",
        f"| … per sentence, p50 / max | {per_sentence['p50']:.3f} / {per_sentence['max']:.3f} |",
        f"| real-time factor, two at a time (as a live narration) | {pair['real_time_factor']:.3f} |",
        f"| first sentence's synthesis | {alone['first_sentence_synthesis_seconds']:.2f} s |",
        f"| mastering, seconds per second of speech | {alone['mastering_real_time_factor']:.3f} |",
        "",
        f"Live preview through a media server on 127.0.0.1, {live['runs']} runs, seconds from the request:",
        "",
        "| event | p50 | max |",
        "|---|---:|---:|",
        f"| first sentence spoken | {latency('first_sentence_spoken_seconds')} |",
        f"| live playlist playable (`playlist_ready`) | {latency('playlist_ready_seconds')} |",
        f"| whole narration encoded (`completed`) | {latency('narration_completed_seconds')} |",
    ]
    return "\n".join(lines) + "\n"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_settings(argv: Sequence[str] | None = None) -> NarrationBenchSettings:
    """Reads the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.narration", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--live-runs",
        type=_positive,
        default=DEFAULT_LIVE_RUNS,
        help=f"live narrations timed (default {DEFAULT_LIVE_RUNS})",
    )
    parser.add_argument(
        "--sentences", type=_positive, help="speak only the script's first N sentences (default all)"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("var/bench"), help="default var/bench")
    arguments = parser.parse_args(argv)
    return NarrationBenchSettings(
        live_runs=arguments.live_runs, max_sentences=arguments.sentences, output_dir=arguments.output_dir
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    report = asyncio.run(run_narration_bench(settings))
    print(render_markdown(report), end="")
    print(f"({report['wall_seconds']:.1f} s; written to {settings.output_dir}/narration.{{json,md}})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
