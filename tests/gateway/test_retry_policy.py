"""The one retry decision of a job: what follows a failed attempt."""

from __future__ import annotations

import pytest

from services.gateway.errors import FailureKind, GatewayError
from services.gateway.jobs.retry_policy import Outcome, RetryPolicy

POLICY = RetryPolicy(max_attempts=3, retry_delay_seconds=2.0)


@pytest.mark.parametrize(
    "kind",
    [
        FailureKind.INVALID_INPUT,
        FailureKind.NOT_FOUND,
        FailureKind.PRECONDITION,
        FailureKind.DEADLINE,
        FailureKind.CANCELLED,
        FailureKind.EXHAUSTED,
    ],
)
def test_a_failure_another_attempt_would_repeat_finishes_the_job_at_once(kind: FailureKind) -> None:
    decision = POLICY.after_failure(GatewayError(kind, "why"), attempt=1)
    assert decision.outcome is Outcome.FINISH
    assert decision.failure.message == "why"


@pytest.mark.parametrize("kind", [FailureKind.UNAVAILABLE, FailureKind.INTERNAL])
def test_a_retryable_failure_is_retried_later_each_time_then_dead_lettered_with_the_reason(
    kind: FailureKind,
) -> None:
    first = POLICY.after_failure(GatewayError(kind, "media went away"), attempt=1)
    second = POLICY.after_failure(GatewayError(kind, "media went away"), attempt=2)
    last = POLICY.after_failure(GatewayError(kind, "media went away"), attempt=3)
    assert (first.outcome, first.delay_seconds) == (Outcome.RETRY, 2.0)
    assert (second.outcome, second.delay_seconds) == (Outcome.RETRY, 4.0)
    assert last.outcome is Outcome.DEAD_LETTER
    assert last.failure.kind is kind
    assert last.failure.message == "gave up after 3 attempts: media went away"


def test_a_job_delivered_past_its_attempts_is_a_crash_loop() -> None:
    assert not POLICY.is_crash_loop(3)
    assert POLICY.is_crash_loop(4)
    assert POLICY.gave_up(4, "the gateway stopped").message == "gave up after 3 attempts: the gateway stopped"
