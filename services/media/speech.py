"""Offline narration: libespeak-ng (from the espeakng-loader wheel) driven through ctypes on one thread."""

from __future__ import annotations

import asyncio
import ctypes
import io
import threading
import wave
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import espeakng_loader
import numpy as np
import numpy.typing as npt

from services.media.errors import SpeechError
from services.script_marks import Silence, SpokenText, speakable_text, split_on_pauses

_SAMPLE_WIDTH_BYTES = 2
# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # without it a bad data path makes libespeak-ng call exit() on our process
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAMETER_RATE = 1
_PARAMETER_PITCH = 3
_PARAMETER_RANGE = 4
_EE_OK = 0
# The synth callback receives this many milliseconds of audio per call; larger means fewer Python calls.
_CALLBACK_BUFFER_MILLISECONDS = 500
# A slightly narrower pitch range than espeak's 50 keeps the intonation from sounding sing-song.
_PITCH_RANGE = 40
# Voices start a stretch with a sharp attack (espeak) or end it on low noise (Piper); short fades make sure
# no stretch meets the inserted digital silence with a step, which a listener hears as a click.
_FADE_IN_SECONDS = 0.02
# The breath after a sentence that no pause mark follows: what espeak itself leaves after a full stop.
SENTENCE_SILENCE_SECONDS = 0.5
_FADE_OUT_SECONDS = 0.05

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Narration:
    """Mono signed 16-bit little-endian PCM narration."""

    pcm_s16le: bytes
    sample_rate_hertz: int
    # Sentences a voice model (the Realtime API) read other than written; a reader (espeak) never does.
    misread_sentence_count: int = 0

    @property
    def duration_seconds(self) -> float:
        return len(self.pcm_s16le) / _SAMPLE_WIDTH_BYTES / self.sample_rate_hertz


class _Engine:
    """The process-wide libespeak-ng: its state is global, so every use holds `lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sample_rate_hertz = 0
        self._library: ctypes.CDLL | None = None
        self._chunks: list[bytes] = []
        self._abort: threading.Event | None = None
        # Kept on the instance: ctypes would free the trampoline while libespeak-ng still calls it.
        self._callback = _SynthCallback(self._collect)

    def _collect(self, samples: ctypes._Pointer[ctypes.c_short], count: int, _events: int | None) -> int:
        if count > 0 and samples:
            self._chunks.append(ctypes.string_at(samples, count * _SAMPLE_WIDTH_BYTES))
        # A non-zero return asks espeak to stop synthesising.
        return 1 if self._abort is not None and self._abort.is_set() else 0

    def initialize(self) -> None:
        """Loads and initialises libespeak-ng once per process; the caller holds `lock`."""
        if self._library is not None:
            return
        try:
            library = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as error:
            raise SpeechError(f"libespeak-ng could not be loaded: {error}") from error
        library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        library.espeak_Initialize.restype = ctypes.c_int
        library.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        library.espeak_SetSynthCallback.restype = None
        library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        library.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        sample_rate_hertz = library.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            _CALLBACK_BUFFER_MILLISECONDS,
            data_path.encode(),
            _INITIALIZE_DONT_EXIT,
        )
        if sample_rate_hertz <= 0:
            raise SpeechError(f"libespeak-ng failed to initialise with its voice data at {data_path}")
        library.espeak_SetSynthCallback(self._callback)
        self.sample_rate_hertz = sample_rate_hertz
        self._library = library

    def configure(self, voice: str, words_per_minute: int, pitch: int) -> None:
        """Selects the voice and prosody; the caller holds `lock` (another narrator may have changed them)."""
        library = self._require_library()
        if library.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise SpeechError(f"espeak-ng has no voice named {voice!r}")
        for parameter, value in (
            (_PARAMETER_RATE, words_per_minute),
            (_PARAMETER_PITCH, pitch),
            (_PARAMETER_RANGE, _PITCH_RANGE),
        ):
            if library.espeak_SetParameter(parameter, value, 0) != _EE_OK:
                raise SpeechError(f"espeak-ng rejected parameter {parameter} = {value}")

    def synthesize(self, text: str, abort: threading.Event) -> npt.NDArray[np.int16]:
        """Speaks `text` and returns its samples; the caller holds `lock`."""
        library = self._require_library()
        encoded = text.encode("utf-8") + b"\0"
        self._chunks = []
        self._abort = abort
        try:
            status = library.espeak_Synth(
                encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            if status == _EE_OK:
                status = library.espeak_Synchronize()
            if status != _EE_OK:
                raise SpeechError(f"espeak-ng failed to synthesise speech (error {status})")
            return np.frombuffer(b"".join(self._chunks), dtype="<i2").astype(np.int16)
        finally:
            self._chunks = []
            self._abort = None

    def _require_library(self) -> ctypes.CDLL:
        if self._library is None:
            raise SpeechError("libespeak-ng is not initialised")
        return self._library


_ENGINE = _Engine()


class EspeakNarrator:
    """Narrates meditation scripts offline, honouring `[pause Ns]` marks with exact digital silence.

    libespeak-ng is blocking and keeps global state, so synthesis runs on one thread owned by the narrator
    (and a process-wide lock serialises narrators); the event loop only awaits the result.
    """

    def __init__(self, voice: str = "en-us", words_per_minute: int = 125, pitch: int = 40) -> None:
        if not 80 <= words_per_minute <= 450:
            raise ValueError(f"words_per_minute must be between 80 and 450, not {words_per_minute}")
        if not 0 <= pitch <= 100:
            raise ValueError(f"pitch must be between 0 and 100, not {pitch}")
        self._voice = voice
        self._words_per_minute = words_per_minute
        self._pitch = pitch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        self._is_closed = False
        self._ready: Future[None] = self._executor.submit(self._initialize)

    @staticmethod
    def _initialize() -> None:
        with _ENGINE.lock:
            _ENGINE.initialize()

    async def narrate(self, script: str) -> Narration:
        """Speaks `script`; raises SpeechError when it has nothing to say or espeak fails."""
        if self._is_closed:
            raise SpeechError("the narrator is closed")
        segments = split_on_pauses(script)
        if not any(isinstance(segment, SpokenText) and speakable_text(segment.text) for segment in segments):
            raise SpeechError("the script has no words to speak")
        await asyncio.wrap_future(self._ready)
        abort = threading.Event()
        try:
            future = self._executor.submit(self._narrate_blocking, segments, abort)
        except RuntimeError as error:  # closed while this call waited for initialisation
            raise SpeechError("the narrator is closed") from error
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            abort.set()
            raise

    def close(self) -> None:
        """Stops the narrator's thread; libespeak-ng itself stays loaded for the life of the process."""
        self._is_closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _narrate_blocking(self, segments: list[SpokenText | Silence], abort: threading.Event) -> Narration:
        with _ENGINE.lock:
            _ENGINE.configure(self._voice, self._words_per_minute, self._pitch)
            sample_rate_hertz = _ENGINE.sample_rate_hertz
            pieces: list[npt.NDArray[np.int16]] = []
            has_speech = False
            for segment in segments:
                if abort.is_set():
                    raise SpeechError("narration was cancelled")
                if isinstance(segment, Silence):
                    pieces.append(np.zeros(round(segment.seconds * sample_rate_hertz), dtype=np.int16))
                    continue
                text = speakable_text(segment.text)
                if not text:
                    continue
                # espeak phrases the whole stretch itself: about 0.5 s after a full stop and 0.25 s after a
                # comma at 125 wpm, so no sentence gap needs adding inside it.
                samples = _ENGINE.synthesize(text, abort)
                if samples.any():
                    pieces.append(fade_edges(_trim_silence(samples), sample_rate_hertz))
                    has_speech = True
            # The silence after the last sentence is trimmed with the rest, and a live narration speaks
            # one sentence per call: without this, sentences would follow each other with no breath. A
            # pause mark at the end already is the gap.
            if segments and not isinstance(segments[-1], Silence):
                pieces.append(np.zeros(round(SENTENCE_SILENCE_SECONDS * sample_rate_hertz), dtype=np.int16))
        if not has_speech:
            raise SpeechError("espeak-ng produced no audible speech for the script")
        pcm = np.concatenate(pieces).astype("<i2").tobytes()
        return Narration(pcm_s16le=pcm, sample_rate_hertz=sample_rate_hertz)


def encode_wav(narration: Narration) -> bytes:
    """Wraps the narration's PCM in a mono 16-bit WAV container."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(_SAMPLE_WIDTH_BYTES)
        wav.setframerate(narration.sample_rate_hertz)
        wav.writeframes(narration.pcm_s16le)
    return buffer.getvalue()


def _trim_silence(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """Drops espeak's leading and trailing exact zeros so gaps and pause marks alone decide the timing."""
    audible = np.flatnonzero(samples)
    return samples[audible[0] : audible[-1] + 1]


def fade_edges(samples: npt.NDArray[np.int16], sample_rate_hertz: int) -> npt.NDArray[np.int16]:
    """Raised-cosine fades in and out, so no stretch of speech meets silence with a step (a click)."""
    shaped = samples.astype(np.float32)
    fade_in = min(round(_FADE_IN_SECONDS * sample_rate_hertz), shaped.size // 2)
    fade_out = min(round(_FADE_OUT_SECONDS * sample_rate_hertz), shaped.size // 2)
    if fade_in:
        shaped[:fade_in] *= _raised_cosine(fade_in)
    if fade_out:
        shaped[-fade_out:] *= _raised_cosine(fade_out)[::-1]
    return np.round(shaped).astype(np.int16)


def _raised_cosine(length: int) -> npt.NDArray[np.float32]:
    return (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, length, dtype=np.float32))).astype(np.float32)
