"""What follows a failed job attempt: finish the job, try it again later, or give up and dead-letter it.

The one retry layer of a job's streams and non-idempotent calls (idempotent unary calls are retried by the
channel, `services/gateway/backends.py`): a pure decision from the failure and the attempt number.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from services.gateway.errors import FailureKind, GatewayError

# Failures another attempt may not repeat: a crash, a bug, a service that stayed unreachable or cut a stream
# (a replica stopping mid-stream), an image FFmpeg chokes on (INTERNAL). Bad input, a spent deadline or a
# cancellation end the job at once.
RETRYABLE_FAILURES = frozenset({FailureKind.UNAVAILABLE, FailureKind.INTERNAL})


class Outcome(enum.Enum):
    """What to do with the job after a failed attempt."""

    FINISH = "finish"  # record it FAILED with the failure's message
    RETRY = "retry"  # hand it back to the queue for another attempt after `delay_seconds`
    DEAD_LETTER = "dead_letter"  # record it FAILED with `failure` and dead-letter it


@dataclass(frozen=True)
class Decision:
    """The policy's answer: the outcome, the wait before a retry, and the failure the job ends with."""

    outcome: Outcome
    failure: GatewayError
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how far apart, a job is attempted."""

    max_attempts: int = 3
    retry_delay_seconds: float = 2.0

    def after_failure(self, failure: GatewayError, attempt: int) -> Decision:
        """Attempt `attempt` (1-based) failed with `failure`."""
        if failure.kind not in RETRYABLE_FAILURES:
            return Decision(Outcome.FINISH, failure)
        if attempt >= self.max_attempts:
            reason = f"gave up after {attempt} attempts: {failure.message}"
            return Decision(Outcome.DEAD_LETTER, GatewayError(failure.kind, reason))
        return Decision(Outcome.RETRY, failure, delay_seconds=self.retry_delay_seconds * attempt)

    def is_crash_loop(self, delivery_count: int) -> bool:
        """Whether a job delivered this often has used up its attempts on replicas that died running it."""
        return delivery_count > self.max_attempts

    def gave_up(self, delivery_count: int, last_failure: str) -> GatewayError:
        """The failure a crash-looping job ends with."""
        return GatewayError(
            FailureKind.INTERNAL, f"gave up after {delivery_count - 1} attempts: {last_failure}"
        )


@dataclass(frozen=True)
class EventWritePolicy:
    """How a running job rides out an unreachable job database: each event's write is tried again, further
    and further apart, for up to `max_wait_seconds` (a PostgreSQL restart refuses connections for up to a
    minute). Only then does the attempt fail, and the policy above take over.

    Safe to repeat because an event's write is idempotent (`JobStore.record_event`)."""

    max_wait_seconds: float = 90.0
    first_delay_seconds: float = 0.25
    max_delay_seconds: float = 2.0

    def delay_after(self, failures: int) -> float:
        """The wait before the next try, after `failures` (1-based) failed ones in a row."""
        return min(self.max_delay_seconds, self.first_delay_seconds * 2.0 ** (failures - 1))
