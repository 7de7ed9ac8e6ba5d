"""The media service's domain errors; `servicer.py` maps them to gRPC status codes in one place."""

from __future__ import annotations


class MediaError(Exception):
    """Base of every error the media service reports to its callers."""


class InvalidInputError(MediaError):
    """A request value is malformed or out of range; the message says which field and what to fix."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class AssetNotFoundError(MediaError):
    """An input asset is missing from storage."""

    def __init__(self, storage_key: str) -> None:
        super().__init__(f"asset {storage_key!r} is not in storage")
        self.storage_key = storage_key


class SpeechError(MediaError):
    """Speech synthesis failed."""


class EncodingError(MediaError):
    """FFmpeg failed to encode; `detail` holds the tail of its log for operators, not for clients."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class StageTimeoutError(MediaError):
    """A stage ran past its configured timeout."""

    def __init__(self, stage: str, timeout_seconds: float) -> None:
        super().__init__(f"{stage} took longer than {timeout_seconds:g} s")
        self.stage = stage
        self.timeout_seconds = timeout_seconds


class ScratchSpaceError(MediaError):
    """The media scratch disk is full, or under the configured minimum of free space: this replica cannot
    encode until space returns (another replica may)."""

    def __init__(self, *, free_bytes: int | None, min_free_bytes: int | None) -> None:
        if free_bytes is None or min_free_bytes is None:
            message = "the media scratch disk is full; try again shortly"
        else:
            message = (
                f"the media scratch disk is full ({free_bytes >> 20} MiB free, at least "
                f"{min_free_bytes >> 20} MiB needed to encode); try again shortly"
            )
        super().__init__(message)
        self.free_bytes = free_bytes
        self.min_free_bytes = min_free_bytes
