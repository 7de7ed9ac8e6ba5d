"""Deleting a conversation erases everything made from it, wherever it is kept (AIP-135, and the right to
erasure): the gateway's meditations with their event logs and stored assets, then the conversation itself
with what the content service made from it."""

from __future__ import annotations

from services.gateway.errors import FailureKind, GatewayError
from services.gateway.jobs import MeditationJobs
from services.gateway.ports import ContentPort


async def delete_conversation(owner: str, name: str, *, content: ContentPort, jobs: MeditationJobs) -> int:
    """Erases `owner`'s conversation `name` and returns how many meditations went with it. Someone else's
    conversation is NOT_FOUND, exactly as a missing one is: every step is limited to `owner`'s own rows.

    Derived things go first and the source last, so a deletion cut short (a service unreachable) is finished
    by a retry rather than leaving meditations of a conversation that is gone. A meditation started while
    this runs either sees the conversation gone (NOT_FOUND when it starts or records what it made) or is
    found by the second sweep."""
    erased = await jobs.delete_of_conversation(owner, name)
    try:
        await content.delete_conversation(owner, name)
    except GatewayError as error:
        # A retry after a deletion whose answer was lost: its meditations were the owner's, so the
        # conversation was too, and it is gone — which is what was asked.
        if error.kind is not FailureKind.NOT_FOUND or erased == 0:
            raise
    return erased + await jobs.delete_of_conversation(owner, name)
