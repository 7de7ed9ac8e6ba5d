"""The content and media servicers' shared translation of provider and storage failures to statuses."""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from services.openai_api import ProviderCallError, ProviderFailureKind
from services.storage.base import StorageUnavailableError

logger = logging.getLogger(__name__)

# The failures of what a service depends on, caught by each servicer and turned into a status here.
DEPENDENCY_FAILURES = (ProviderCallError, StorageUnavailableError)

# Trailing metadata on an UNAVAILABLE that a servicer of ours sent: the service answered, and its message says
# what it depends on is down (storage, the database, the cache, a provider). The gateway passes such a message
# on; an UNAVAILABLE without it came from the transport (the service itself is out of reach), whose own words
# name internal addresses and stay in the gateway.
ANSWERED_UNAVAILABLE_KEY = "stillpoint-dependency-unavailable"
_ANSWERED_UNAVAILABLE = ((ANSWERED_UNAVAILABLE_KEY, "1"),)

_PROVIDER_STATUS = {
    ProviderFailureKind.CREDENTIALS: grpc.StatusCode.FAILED_PRECONDITION,
    ProviderFailureKind.MODEL: grpc.StatusCode.FAILED_PRECONDITION,
    ProviderFailureKind.REJECTED: grpc.StatusCode.FAILED_PRECONDITION,
    ProviderFailureKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ProviderFailureKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of_dependency_failure(
    error: ProviderCallError | StorageUnavailableError,
) -> tuple[grpc.StatusCode, str]:
    """The status code and short, actionable client message (AIP-193) for a provider or storage failure."""
    if isinstance(error, ProviderCallError):
        return _PROVIDER_STATUS[error.kind], error.message
    # Retryable: the gateway does the work again on a replica that can reach storage. What storage said is
    # for operators; it stays in the log.
    logger.warning("storage unavailable: %s", error)
    return grpc.StatusCode.UNAVAILABLE, "asset storage is unavailable; try again shortly"


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:  # type: ignore[type-arg]
    """Ends the RPC with `code` and `message`, marking an UNAVAILABLE as the service's own answer."""
    metadata = _ANSWERED_UNAVAILABLE if code == grpc.StatusCode.UNAVAILABLE else ()
    await context.abort(code, message, trailing_metadata=metadata)
