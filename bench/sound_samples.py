"""Listening samples for the trade between the live sound and its bytes: one narration, made as the live
encoder makes it, once at each AAC quality (`-q:a`), under names that do not say which.

    python -m bench.sound_samples [--voice piper|espeak] [--qualities 2.0,1.5,1.2] [--seed N]
        [--output-dir var/bench/sound]

The QUICK target is met, under make bench's latency model, only with fewer bytes (README: "What the latest
run missed, and why"), and which quality is good enough is a listening question: the same script, voice,
mastering, room and bed in every file, only the quality different, shuffled into A.aac, B.aac, ... Listen on
headphones first; `key.json` then says which file is which quality, with its bitrate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import string
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.conversations import conversation_for, source_text_of
from services.content.script_composer import compose_meditation
from services.media.live_encoder import LiveEncoder, master_sentence
from services.media.speech import EspeakNarrator, Narration
from services.media.video import LIVE_AAC_QUALITY, measure_audio_seconds
from services.sentences import SentenceSplitter

DEFAULT_QUALITIES = (LIVE_AAC_QUALITY, 1.5, 1.2)
VOICES = ("piper", "espeak")


def write_samples(
    sentences: Sequence[Narration], qualities: Sequence[float], output_dir: Path, *, seed: int
) -> dict[str, dict[str, float]]:
    """Encodes the spoken sentences once per quality, as a live narration would (mastered, in the room, over
    the bed), into `output_dir` as A.aac, B.aac, ... in a shuffled order; writes and returns the key: each
    file's quality and bitrate. Blocking."""
    if not sentences:
        raise ValueError("there is nothing to encode: no sentences")
    if not 1 <= len(qualities) <= len(string.ascii_uppercase) or len(set(qualities)) != len(qualities):
        raise ValueError(f"qualities must be 1 to 26 different values, not {list(qualities)}")
    mastered = [master_sentence(sentence) for sentence in sentences]
    rate = mastered[0].sample_rate_hertz
    shuffled = list(qualities)
    random.Random(seed).shuffle(shuffled)
    output_dir.mkdir(parents=True, exist_ok=True)
    key: dict[str, dict[str, float]] = {}
    for letter, quality in zip(string.ascii_uppercase, shuffled, strict=False):
        with tempfile.TemporaryDirectory(prefix="sound-sample-") as work:
            encoder = LiveEncoder(Path(work), rate, aac_quality=quality)
            try:
                for index, sentence in enumerate(mastered):
                    encoder.write(sentence, is_last=index == len(mastered) - 1)
                encoder.close()
            finally:
                encoder.abandon()
            path = output_dir / f"{letter}.aac"
            shutil.copyfile(encoder.aac_path, path)
        seconds = measure_audio_seconds(path)
        key[path.name] = {
            "aac_quality": quality,
            "kbit_per_second": round(path.stat().st_size * 8 / seconds / 1000, 1),
            "seconds": round(seconds, 2),
        }
    (output_dir / "key.json").write_text(json.dumps(key, indent=2) + "\n")
    return key


async def narrate(script: str, voice: str) -> list[Narration]:
    """The script spoken a sentence at a time, as the live narration asks for it, by an offline voice."""
    splitter = SentenceSplitter()
    texts = splitter.feed(script) + splitter.finish()
    if voice == "piper":
        from services.media.piper_speech import PiperNarrator  # loads a voice model: only when asked for

        piper = PiperNarrator()
        try:
            await piper.ready()
            return [await piper.narrate(text) for text in texts]
        finally:
            piper.close()
    espeak = EspeakNarrator()
    try:
        return [await espeak.narrate(text) for text in texts]
    finally:
        espeak.close()


def _qualities(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if any(not 0.1 <= value <= 5.0 for value in values):
        raise argparse.ArgumentTypeError("each quality must be between 0.1 and 5 (FFmpeg's -q:a for AAC)")
    return values


def main(arguments: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sound_samples", description=__doc__.split("\n")[0])
    parser.add_argument("--voice", choices=VOICES, default="piper", help="the offline voice (default piper)")
    parser.add_argument(
        "--qualities",
        type=_qualities,
        default=DEFAULT_QUALITIES,
        help=f"AAC qualities, comma-separated (default {','.join(map(str, DEFAULT_QUALITIES))})",
    )
    parser.add_argument("--seed", type=int, default=None, help="the shuffle's seed (default: a new one)")
    parser.add_argument("--output-dir", type=Path, default=Path("var/bench/sound"))
    options = parser.parse_args(arguments)
    # The first bench conversation's script, by the offline composer: what make bench narrates first.
    script = compose_meditation(source_text_of(conversation_for(0)))
    sentences = asyncio.run(narrate(script, options.voice))
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**32)
    key = write_samples(sentences, options.qualities, options.output_dir, seed=seed)
    names = ", ".join(sorted(key))
    print(f"wrote {names} to {options.output_dir}: listen first, then read key.json")


if __name__ == "__main__":
    main()
