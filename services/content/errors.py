"""The content service's domain errors; `servicer.py` maps them to gRPC status codes in one place."""

from __future__ import annotations


class ContentError(Exception):
    """Base of every error the content service reports to its callers."""


class InvalidInputError(ContentError):
    """A request value is malformed or out of range; the message says which field and what to fix."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFoundError(ContentError):
    """A named resource does not exist."""

    def __init__(self, resource_name: str) -> None:
        super().__init__(f"{resource_name} does not exist")
        self.resource_name = resource_name


class PreconditionError(ContentError):
    """The resource exists but is not in a state that allows the request."""


class QuotaExceededError(ContentError):
    """The request would take an owner past a limit (how many conversations they keep, how large one may
    grow); the message says which, how far, and what to do instead."""


class AlreadyExistsError(InvalidInputError):
    """A request id was used before for a different request (AIP-155): the message says what to do."""


class DatabaseUnavailableError(ContentError):
    """The conversation database cannot be reached (down, restarting, out of connections): a retry shortly
    may succeed."""
