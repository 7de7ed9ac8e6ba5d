"""The seeded latency model both pipelines run under: what the outside world costs, reproducibly.

The ranges are the reference pipeline's own timing analysis: transcript 3–8 s, image 10–20 s, speech
5–10 s for a whole script, upload 1–3 s, database 0.1–0.5 s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tests.servers.openai_compatible import DEFAULT_MODELS, LatencySpec, ModelSpec, ServerConfig

# A typical 450-word script with its pause marks is about this long; a speech request for a part of a script
# takes that part's share of the whole script's 5–10 s.
TYPICAL_SCRIPT_CHARACTERS = 2600
# The reference pipeline's 1–3 s upload is for its video, 3.5–4.3 MB for a 450-word narration: with size
# scaling, smaller objects (HLS segments, playlists) take their share of it, and never less than 5 % (a
# round trip).
TYPICAL_VIDEO_BYTES = 4_000_000
# The reference pipeline called GPT-4o and DALL-E 3; the server offers them beside the models Stillpoint is
# set up with.
REFERENCE_CHAT_MODEL = "gpt-4o"
REFERENCE_IMAGE_MODEL = "dall-e-3"
SPEECH_MODEL = "gpt-4o-mini-tts"
STILLPOINT_CHAT_MODEL = "gpt-5.6-terra"
STILLPOINT_IMAGE_MODEL = "gpt-image-2.5-flare"


@dataclass(frozen=True)
class SecondsRange:
    """A uniform range of seconds."""

    min_seconds: float
    max_seconds: float

    def as_pair(self) -> tuple[float, float]:
        return (self.min_seconds, self.max_seconds)

    def describe(self) -> str:
        return f"{self.min_seconds:g}–{self.max_seconds:g} s"


@dataclass(frozen=True)
class LatencyModel:
    """Every simulated latency and the seed that makes its draws reproducible."""

    seed: int = 20261121
    transcript: SecondsRange = field(default_factory=lambda: SecondsRange(3.0, 8.0))
    image: SecondsRange = field(default_factory=lambda: SecondsRange(10.0, 20.0))
    speech_whole_script: SecondsRange = field(default_factory=lambda: SecondsRange(5.0, 10.0))
    speech_scale_by_characters: int = TYPICAL_SCRIPT_CHARACTERS
    upload: SecondsRange = field(default_factory=lambda: SecondsRange(1.0, 3.0))
    # None: every upload and TUS PATCH takes the whole 1–3 s, however small.
    upload_scale_by_bytes: int | None = TYPICAL_VIDEO_BYTES
    database: SecondsRange = field(default_factory=lambda: SecondsRange(0.1, 0.5))

    def provider_config(self, api_key: str, *, chat_text: str | None = None) -> ServerConfig:
        """The OpenAI-compatible server's configuration: chat tokens stream across the transcript latency,
        images take the image latency, speech scales with the length of what is spoken."""
        models = (*DEFAULT_MODELS, ModelSpec(REFERENCE_CHAT_MODEL), ModelSpec(REFERENCE_IMAGE_MODEL))
        return ServerConfig(
            api_key=api_key,
            models=models,
            latency={
                "chat": LatencySpec(
                    min_seconds=self.transcript.min_seconds,
                    max_seconds=self.transcript.max_seconds,
                    seed=self.seed + 1,
                ),
                "images": LatencySpec(
                    min_seconds=self.image.min_seconds, max_seconds=self.image.max_seconds, seed=self.seed + 2
                ),
                "speech": LatencySpec(
                    min_seconds=self.speech_whole_script.min_seconds,
                    max_seconds=self.speech_whole_script.max_seconds,
                    seed=self.seed + 3,
                    scale_by_characters=self.speech_scale_by_characters,
                ),
            },
            chat_text=chat_text,
            # Its paintings and its speech are the provider's work on its own machines: painted once per
            # size (and, by the server, each sentence spoken once), they take the cores the services under
            # test are measured on as little as they can.
            paints_once_per_size=True,
        )

    @property
    def upload_seed(self) -> int:
        return self.seed + 4

    def database_delays(self) -> DatabaseDelays:
        """The reference pipeline's database step as a seeded sleep per job (Stillpoint uses the real
        PostgreSQL)."""
        return DatabaseDelays(self.database, random.Random(self.seed + 5))

    def to_json_object(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "transcript_seconds": self.transcript.as_pair(),
            "image_seconds": self.image.as_pair(),
            "speech_whole_script_seconds": self.speech_whole_script.as_pair(),
            "speech_scale_by_characters": self.speech_scale_by_characters,
            "upload_seconds": self.upload.as_pair(),
            "upload_scale_by_bytes": self.upload_scale_by_bytes,
            "reference_database_seconds": self.database.as_pair(),
        }


class DatabaseDelays:
    """Draws the reference pipeline's database latency, one per job, in a reproducible order."""

    def __init__(self, seconds: SecondsRange, generator: random.Random) -> None:
        self._seconds = seconds
        self._generator = generator

    def next_seconds(self) -> float:
        return self._generator.uniform(self._seconds.min_seconds, self._seconds.max_seconds)
