"""Rules for the conversations clients store, checked before anything is written."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.content.errors import InvalidInputError, PreconditionError
from services.content.repository import ContentRepository, NewMessage
from services.content.source import SourceMessage, collect_source_text
from services.content.spoken_safety import signals_crisis
from services.content.themes import extract_themes
from services.message_roles import ROLES

MAX_TITLE_CHARS = 200
MAX_MESSAGE_CHARS = 20_000
MAX_MESSAGES_PER_REQUEST = 500
MAX_REQUEST_ID_CHARS = 64


# Characters no conversation needs and some attacks do: NUL (PostgreSQL refuses it in text), the other C0
# controls but tab, newline and carriage return, and the bidirectional overrides and isolates that can make
# text display as something else (Trojan Source, CVE-2021-42574). Text containing them is refused, not
# silently changed, so what is stored is what the person sent.
_FORBIDDEN_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069]")
# Invisible characters that make a blank text look non-empty.
_INVISIBLE = re.compile("[\\s\u200b\u200c\u200d\u2060\ufeff]+")


def check_text(field: str, text: str) -> None:
    """Refuses text with control characters or bidirectional overrides, naming the field and the rule."""
    found = _FORBIDDEN_CHARACTERS.search(text)
    if found is not None:
        raise InvalidInputError(
            field,
            f"contains the control character U+{ord(found.group()):04X}: remove control characters and "
            "bidirectional overrides (U+202A–U+202E, U+2066–U+2069)",
        )


def is_blank(text: str) -> bool:
    """Whether the text is empty once whitespace and zero-width characters are taken away."""
    return not _INVISIBLE.sub("", text)


def validate_title(title: str) -> str:
    """Returns the title stripped, or raises when it is too long or carries forbidden characters."""
    if len(title) > MAX_TITLE_CHARS:
        raise InvalidInputError(
            "title", f"is {len(title)} characters; shorten it to at most {MAX_TITLE_CHARS}"
        )
    check_text("title", title)
    return title.strip()


def validate_request_id(request_id: str) -> str | None:
    """Returns the request id, None when unset, or raises when it is too long."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidInputError("request_id", f"is longer than {MAX_REQUEST_ID_CHARS} characters; use a UUID")
    return request_id or None


def validate_messages(messages: Sequence[NewMessage], *, allow_empty: bool) -> None:
    """Raises InvalidInputError naming the first message that breaks a rule."""
    if not messages and not allow_empty:
        raise InvalidInputError("messages", "is empty: send at least one message")
    if len(messages) > MAX_MESSAGES_PER_REQUEST:
        raise InvalidInputError(
            "messages", f"has {len(messages)} entries; send at most {MAX_MESSAGES_PER_REQUEST} per request"
        )
    for index, message in enumerate(messages):
        if message.role not in ROLES:
            raise InvalidInputError(f"messages[{index}].role", "is unset: use USER, ASSISTANT or SYSTEM")
        check_text(f"messages[{index}].text", message.text)
        if is_blank(message.text):
            raise InvalidInputError(f"messages[{index}].text", "is blank: every message needs text")
        if len(message.text) > MAX_MESSAGE_CHARS:
            raise InvalidInputError(
                f"messages[{index}].text",
                f"is {len(message.text)} characters; the limit is {MAX_MESSAGE_CHARS}: "
                "split it into several messages",
            )


@dataclass(frozen=True)
class SourceContent:
    """The part of a conversation a meditation is written from, its themes, and whether it is in crisis."""

    text: str
    sha256: str
    themes: tuple[str, ...]
    # The whole conversation signals a risk of suicide or self-harm: it gets the grounding script, and no
    # theme of it is named.
    is_crisis: bool = False


def request_sha256(title: str, messages: Sequence[NewMessage]) -> str:
    """What a CreateConversation request asked for, as a hash: a retry with its request_id must match it."""
    request = {
        "title": title,
        "messages": [
            [message.role, message.text, message.create_time.isoformat() if message.create_time else None]
            for message in messages
        ],
    }
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


async def collect_source_content(
    repository: ContentRepository, owner: str, conversation_id: str
) -> SourceContent:
    """Loads `owner`'s conversation and cuts it to the most recent, most substantive text."""
    conversation = await repository.get_conversation(owner, conversation_id)
    if not conversation.messages:
        raise PreconditionError(
            f"conversations/{conversation_id} has no messages: add some with AppendMessages first"
        )
    source = await asyncio.to_thread(_source_content, conversation.messages)
    if not source.text.strip():
        raise PreconditionError(
            f"conversations/{conversation_id} has only system messages: add a user message first"
        )
    return source


def _source_content(messages: Sequence[SourceMessage]) -> SourceContent:
    """The text work of collecting, run off the event loop: a long conversation takes a while to read."""
    text = collect_source_text(messages)
    # Every message but the system's, not only those the cut keeps: a signal must not be trimmed away.
    is_crisis = any(signals_crisis(message.text) for message in messages if message.role != "system")
    return SourceContent(
        text=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        themes=() if is_crisis else tuple(extract_themes(text)),
        is_crisis=is_crisis,
    )
