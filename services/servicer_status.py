"""The content and media servicers' shared translation of provider and storage failures to statuses."""

from __future__ import annotations

import logging

import grpc

from services.openai_api import ProviderCallError, ProviderFailureKind
from services.storage.base import StorageUnavailableError

logger = logging.getLogger(__name__)

# The failures of what a service depends on, caught by each servicer and turned into a status here.
DEPENDENCY_FAILURES = (ProviderCallError, StorageUnavailableError)

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
