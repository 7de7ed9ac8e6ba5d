"""The gateway's domain errors; `servicer.py` maps them to gRPC status codes in one place."""

from __future__ import annotations

import enum


class FailureKind(enum.StrEnum):
    """Why something failed, in terms a client can act on; each maps to one status code."""

    INVALID_INPUT = "invalid_input"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    UNAUTHENTICATED = "unauthenticated"
    PRECONDITION = "precondition"
    EXHAUSTED = "exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE = "deadline"
    CANCELLED = "cancelled"
    # The call cannot go on as it is, but the client can start it again from a point it knows (AIP-193's
    # "retry at a higher level"): a watcher that fell too far behind resumes from its last event.
    ABORTED = "aborted"
    INTERNAL = "internal"


class GatewayError(Exception):
    """Base of every error the gateway reports to clients; `kind` picks the status code."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class InvalidInputError(GatewayError):
    """A request field is malformed; the message names it and says what to fix."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(FailureKind.INVALID_INPUT, f"{field}: {problem}")


class FellBehindError(GatewayError):
    """A stream's reader left too many live events unread and was dropped; it resumes after
    `last_sequence`, the last event the stream sent it."""

    def __init__(self, name: str, last_sequence: int) -> None:
        super().__init__(
            FailureKind.ABORTED,
            f"this stream fell too far behind {name}'s events and was ended: resume with "
            f"WatchMeditation(name={name}, after_sequence={last_sequence})",
        )
        self.last_sequence = last_sequence
