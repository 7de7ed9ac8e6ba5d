"""Conversions between protobuf's well-known time types and Python values, shared by every service."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def to_timestamp(moment: datetime) -> Timestamp:
    """A Timestamp for an aware datetime."""
    timestamp = Timestamp()
    timestamp.FromDatetime(moment)
    return timestamp


def from_timestamp(timestamp: Timestamp) -> datetime:
    """An aware UTC datetime for a Timestamp."""
    return timestamp.ToDatetime(tzinfo=UTC)


def to_duration(seconds: float) -> Duration:
    """A Duration for a number of seconds, to the nanosecond."""
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def seconds_of(duration: Duration) -> float:
    """The number of seconds a Duration holds."""
    return duration.ToNanoseconds() / 1e9
