"""The Realtime API's WebSocket for the OpenAI-compatible test server: one accepted connection, served on the
handler's thread with websockets' sans-I/O protocol, as a voice model that reads what it is given aloud."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, cast, get_args

from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State
from websockets.server import ServerProtocol

# The faults a response can meet: the socket dropped halfway through its audio, an `error` event instead of
# it, a rate limit that fails it, or the model reading a reworded sentence.
ResponseFault = Literal["drop", "error", "rate_limit", "reword"]
RESPONSE_FAULTS: Final[tuple[ResponseFault, ...]] = get_args(ResponseFault)
_VOICE_NAMES: Final = "alloy ash ballad coral echo sage shimmer verse marin cedar"
REALTIME_VOICES: Final = frozenset(_VOICE_NAMES.split())
SAMPLE_RATE_HERTZ: Final = 24_000
# About a tenth of a second of audio per delta, as the API sends it.
_DELTA_BYTES: Final = 4800
_READ_BYTES: Final = 65_536


@dataclass(frozen=True)
class RealtimeClientEvent:
    """One event a client sent, as the server received it, with the connection it came on (numbered from 1
    in the order connections were accepted)."""

    connection: int
    type: str
    body: Mapping[str, object]

    @property
    def read_text(self) -> str | None:
        """For a `response.create` with `input`, the text of its last user message."""
        response = self.body.get("response")
        if self.type != "response.create" or not isinstance(response, dict) or "input" not in response:
            return None
        return _last_user_text(response["input"])


@dataclass
class RealtimeHooks:
    """What a connection needs from the server around it."""

    # The text spoken as 16-bit mono PCM at 24 kHz.
    speak: Callable[[str], bytes]
    # The fault for the next response, if one is due.
    take_fault: Callable[[], ResponseFault | None]
    # When each of `count` audio pieces of a response reading `text` is due, in seconds from its start.
    schedule: Callable[[str, int], list[float]]
    # Waits until a monotonic deadline; raises when the server is stopping.
    sleep_until: Callable[[float], None]
    record: Callable[[RealtimeClientEvent], None]
    monotonic: Callable[[], float]


class DroppedError(Exception):
    """The connection was dropped on purpose (an injected fault)."""


@dataclass
class _Session:
    """The session's effective configuration, as `session.updated` reports it."""

    model: str
    voice: str = "alloy"
    instructions: str = "You are a helpful assistant."
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    has_spoken: bool = False
    session_id: str = field(default_factory=lambda: f"sess_{uuid.uuid4().hex[:20]}")

    def to_json(self) -> dict[str, object]:
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.session_id,
            "model": self.model,
            "output_modalities": self.output_modalities,
            "instructions": self.instructions,
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE_HERTZ}, "turn_detection": None},
                "output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE_HERTZ}, "voice": self.voice},
            },
        }


class RealtimeConnection:
    """Serves one WebSocket until the client closes it, the server stops, or a fault drops it."""

    def __init__(
        self,
        protocol: ServerProtocol,
        *,
        number: int,
        model: str,
        read: Callable[[], bytes],
        write: Callable[[bytes], object],
        hang_up: Callable[[], None],
        hooks: RealtimeHooks,
    ) -> None:
        self._protocol = protocol
        self._number = number
        self._read = read
        self._write = write
        self._hang_up = hang_up
        self._hooks = hooks
        self._session = _Session(model)
        self._conversation: list[dict[str, object]] = []

    def serve(self) -> None:
        """Greets with `session.created`, then answers each client event in turn."""
        self._send({"type": "session.created", "session": self._session.to_json()})
        for received in self._received():
            for frame in received:
                if not isinstance(frame, Frame):
                    continue  # the handshake, answered before this connection was made
                if frame.opcode is Opcode.TEXT:
                    self._handle(bytes(frame.data))
                elif frame.opcode is Opcode.BINARY:
                    self._error("invalid_request_error", "invalid_event", "Binary frames are not supported.")

    def refuse(self, error_type: str, code: str, message: str) -> None:
        """Answers with an `error` event and closes, as the API does for a session it will not open: the
        closing handshake completed (RFC 6455 7.1.1), what the client sent meanwhile read and ignored until
        its own Close comes back. A socket closed with the client's events still unread is reset, and a reset
        throws away what the kernel had not yet sent: now and then, under load, the `error` itself (the
        client then saw only a dropped connection)."""
        self._error(error_type, code, message)
        self._protocol.send_close(1008, message[:100])
        self._flush()
        for _ in self._received():
            pass  # the client's events, unanswered now

    def _received(self) -> Iterator[list[Event]]:
        """What each read from the client brought, until the connection closes or the client hangs up; what
        the caller sends in answer goes out before the next read."""
        while self._protocol.state is not State.CLOSED:
            data = self._read()
            if data:
                self._protocol.receive_data(data)
            else:
                self._protocol.receive_eof()
            yield self._protocol.events_received()
            self._flush()
            if not data:
                return

    # Client events -----------------------------------------------------------------------------------------

    def _handle(self, data: bytes) -> None:
        try:
            event = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._error("invalid_request_error", "invalid_json", "The event is not valid JSON.")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self._error("invalid_request_error", "invalid_event", "The 'type' field is missing.")
            return
        kind = cast(str, event["type"])
        self._hooks.record(RealtimeClientEvent(self._number, kind, event))
        client_event_id = event.get("event_id")
        if kind == "session.update":
            self._update_session(event.get("session"), client_event_id)
        elif kind == "conversation.item.create":
            self._create_item(event.get("item"), client_event_id)
        elif kind == "response.create":
            response = event.get("response") or {}
            if not isinstance(response, dict):
                self._error("invalid_request_error", "invalid_type", "'response' must be an object.")
                return
            self._respond(response)
        elif kind == "response.cancel":
            self._error(
                "invalid_request_error",
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                client_event_id,
            )
        else:
            self._error(
                "invalid_request_error",
                "unknown_event",
                f"This test server does not handle '{kind}' events.",
                client_event_id,
            )

    def _update_session(self, session: object, client_event_id: object) -> None:
        if not isinstance(session, dict) or session.get("type", "realtime") != "realtime":
            self._error(
                "invalid_request_error",
                "invalid_value",
                "Invalid 'session.type': expected 'realtime'.",
                client_event_id,
                "session.type",
            )
            return
        modalities = session.get("output_modalities", self._session.output_modalities)
        if modalities not in (["audio"], ["text"]):
            self._error(
                "invalid_request_error",
                "invalid_value",
                "Invalid 'session.output_modalities': use ['audio'] or ['text'].",
                client_event_id,
                "session.output_modalities",
            )
            return
        output = _nested(session, "audio", "output")
        audio_format = output.get("format")
        if audio_format is not None and audio_format != {"type": "audio/pcm", "rate": SAMPLE_RATE_HERTZ}:
            self._error(
                "invalid_request_error",
                "invalid_value",
                f"This test server speaks audio/pcm at {SAMPLE_RATE_HERTZ} Hz only.",
                client_event_id,
                "session.audio.output.format",
            )
            return
        voice = output.get("voice", self._session.voice)
        if voice not in REALTIME_VOICES:
            self._error(
                "invalid_request_error",
                "invalid_value",
                f"Invalid value: {voice!r}. Supported values are: {', '.join(sorted(REALTIME_VOICES))}.",
                client_event_id,
                "session.audio.output.voice",
            )
            return
        if voice != self._session.voice and self._session.has_spoken:
            self._error(
                "invalid_request_error",
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                client_event_id,
                "session.audio.output.voice",
            )
            return
        self._session.voice = voice
        self._session.output_modalities = cast(list[str], modalities)
        instructions = session.get("instructions")
        if isinstance(instructions, str):
            self._session.instructions = instructions
        self._send({"type": "session.updated", "session": self._session.to_json()})

    def _create_item(self, item: object, client_event_id: object) -> None:
        if not isinstance(item, dict) or item.get("type") != "message":
            self._error(
                "invalid_request_error",
                "invalid_value",
                "This test server takes message items only.",
                client_event_id,
                "item.type",
            )
            return
        stored = {
            "id": f"item_{uuid.uuid4().hex[:20]}",
            "object": "realtime.item",
            **item,
            "status": "completed",
        }
        previous = self._conversation[-1]["id"] if self._conversation else None
        self._conversation.append(stored)
        for kind in ("conversation.item.added", "conversation.item.done"):
            self._send({"type": kind, "previous_item_id": previous, "item": stored})

    def _respond(self, params: Mapping[str, object]) -> None:
        conversation = params.get("conversation", "auto")
        if conversation not in ("auto", "none"):
            self._error("invalid_request_error", "invalid_value", "Invalid 'response.conversation'.")
            return
        text = _last_user_text(params.get("input", self._conversation))
        if not text:
            self._error(
                "invalid_request_error", "invalid_value", "There is no user text for the response to read."
            )
            return
        fault = self._hooks.take_fault()
        if fault == "error":
            self._error(
                "server_error", "server_error", "The server had an error while processing your request."
            )
            return
        modalities = params.get("output_modalities") or self._session.output_modalities
        voice = _nested(params, "audio", "output").get("voice", self._session.voice)
        response_id = f"resp_{uuid.uuid4().hex[:20]}"
        item_id = f"item_{uuid.uuid4().hex[:20]}"
        response: dict[str, object] = {
            "id": response_id,
            "object": "realtime.response",
            "status": "in_progress",
            "status_details": None,
            "conversation_id": "conv_stillpoint" if conversation == "auto" else None,
            "output_modalities": modalities,
            "metadata": params.get("metadata"),
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE_HERTZ}, "voice": voice}},
            "output": [],
            "usage": None,
        }
        self._send({"type": "response.created", "response": response})
        if fault == "rate_limit":
            response["status"] = "failed"
            response["status_details"] = {
                "type": "failed",
                "error": {
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                    "message": "Rate limit reached for requests. Please try again in 20ms.",
                },
            }
            self._send({"type": "response.done", "response": response})
            return
        spoken = _reworded(text) if fault == "reword" else text
        is_audio = "audio" in cast(Sequence[str], modalities)
        part_type = "audio" if is_audio else "text"
        item: dict[str, object] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        where = {"response_id": response_id, "item_id": item_id, "output_index": 0}
        self._send(
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": 0,
                "item": item,
            }
        )
        self._send(
            {"type": "response.content_part.added", **where, "content_index": 0, "part": {"type": part_type}}
        )
        if is_audio:
            self._stream_audio(spoken, where, is_dropped=fault == "drop")
            self._session.has_spoken = True
            part: dict[str, object] = {"type": "audio", "transcript": spoken}
            self._send({"type": "response.output_audio.done", **where, "content_index": 0})
            self._send(
                {
                    "type": "response.output_audio_transcript.done",
                    **where,
                    "content_index": 0,
                    "transcript": spoken,
                }
            )
        else:
            part = {"type": "text", "text": spoken}
            self._send({"type": "response.output_text.delta", **where, "content_index": 0, "delta": spoken})
            self._send({"type": "response.output_text.done", **where, "content_index": 0, "text": spoken})
        self._send({"type": "response.content_part.done", **where, "content_index": 0, "part": part})
        item = {**item, "status": "completed", "content": [{**part, "type": f"output_{part_type}"}]}
        self._send(
            {"type": "response.output_item.done", "response_id": response_id, "output_index": 0, "item": item}
        )
        words = len(spoken.split())
        response.update(
            status="completed",
            output=[item],
            usage={"total_tokens": 20 + 8 * words, "input_tokens": 20, "output_tokens": 8 * words},
        )
        self._send({"type": "response.done", "response": response})
        if conversation == "auto":
            self._conversation.append(item)

    def _stream_audio(self, text: str, where: Mapping[str, object], *, is_dropped: bool) -> None:
        started = self._hooks.monotonic()
        pcm = self._hooks.speak(text)
        pieces = [pcm[i : i + _DELTA_BYTES] for i in range(0, len(pcm), _DELTA_BYTES)]
        self._send(
            {"type": "response.output_audio_transcript.delta", **where, "content_index": 0, "delta": text}
        )
        for index, (offset, piece) in enumerate(
            zip(self._hooks.schedule(text, len(pieces)), pieces, strict=True)
        ):
            if is_dropped and index == len(pieces) // 2:
                # Half the audio is out: the socket goes without a closing handshake, as a network fails.
                self._hang_up()
                raise DroppedError
            self._hooks.sleep_until(started + offset)
            delta = base64.b64encode(piece).decode("ascii")
            self._send({"type": "response.output_audio.delta", **where, "content_index": 0, "delta": delta})

    # Server events -----------------------------------------------------------------------------------------

    def _error(
        self,
        error_type: str,
        code: str,
        message: str,
        client_event_id: object = None,
        param: str | None = None,
    ) -> None:
        error = {
            "type": error_type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id if isinstance(client_event_id, str) else None,
        }
        self._send({"type": "error", "error": error})

    def _send(self, event: dict[str, object]) -> None:
        self._protocol.send_text(json.dumps({"event_id": f"event_{uuid.uuid4().hex[:20]}", **event}).encode())
        self._flush()

    def _flush(self) -> None:
        for data in self._protocol.data_to_send():
            if data:
                self._write(data)
            else:
                # The protocol's signal that the closing handshake is over: the server closes TCP first.
                self._hang_up()


def _nested(data: Mapping[str, object], *keys: str) -> Mapping[str, object]:
    for key in keys:
        value = data.get(key)
        data = value if isinstance(value, dict) else {}
    return data


def _last_user_text(items: object) -> str:
    """The text of the last user message among conversation items."""
    if not isinstance(items, list):
        return ""
    for item in reversed(items):
        if not isinstance(item, dict) or item.get("type") != "message" or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, list):
            texts = [
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "input_text"
            ]
            return " ".join(text for text in texts if text).strip()
    return ""


def _reworded(text: str) -> str:
    """What a voice model makes of a sentence when it does not simply read it: a word of its own at the start,
    the last word left out."""
    words = text.rstrip(".!?…").split()
    return "Now, " + " ".join(words[:-1] or words) + "."
