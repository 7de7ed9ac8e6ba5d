"""Page sizes and page tokens: a token verifies only under the key, owner and list it was issued for."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.environment import ConfigError, Environment
from services.gateway.config import GatewayConfig
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.models import PageCursor
from services.gateway.pagination import MAX_PAGE_SIZE, PageTokens, page_size

SECRET = "a-page-token-secret-every-replica-shares-0123456789"
CURSOR = PageCursor(create_time=datetime(2026, 12, 3, 13, 1, 11, 123456, tzinfo=UTC), id="0123456789abcdef")


def test_page_size_defaults_clamps_and_refuses_negative() -> None:
    assert page_size(0) == 20
    assert page_size(7) == 7
    assert page_size(MAX_PAGE_SIZE + 1) == MAX_PAGE_SIZE
    with pytest.raises(GatewayError) as refused:
        page_size(-1)
    assert refused.value.kind is FailureKind.INVALID_INPUT


def test_a_token_round_trips_its_cursor_exactly_and_is_url_safe() -> None:
    tokens = PageTokens(SECRET)
    token = tokens.issue(CURSOR, scope="ListConversations", owner="alice")
    assert token.replace("-", "").replace("_", "").isalnum()
    assert tokens.verify(token, scope="ListConversations", owner="alice") == CURSOR
    assert tokens.verify("", scope="ListConversations", owner="alice") is None


def test_replicas_sharing_the_secret_accept_each_others_tokens_and_others_do_not() -> None:
    token = PageTokens(SECRET).issue(CURSOR, scope="ListMeditations", owner="alice")
    assert PageTokens(SECRET).verify(token, scope="ListMeditations", owner="alice") == CURSOR
    for stranger in (PageTokens(SECRET[::-1]), PageTokens()):
        with pytest.raises(GatewayError) as refused:
            stranger.verify(token, scope="ListMeditations", owner="alice")
        assert refused.value.kind is FailureKind.INVALID_INPUT


def test_a_process_without_a_secret_keeps_one_random_key() -> None:
    tokens = PageTokens()
    assert not tokens.is_shared and PageTokens(SECRET).is_shared
    token = tokens.issue(CURSOR, scope="ListMeditations", owner="alice")
    assert tokens.verify(token, scope="ListMeditations", owner="alice") == CURSOR


def test_the_owner_and_scope_cannot_be_shifted_into_each_other() -> None:
    """Length-prefixed fields: ("ab", "c") and ("a", "bc") sign different messages."""
    tokens = PageTokens(SECRET)
    token = tokens.issue(CURSOR, scope="ListMeditations?conversation=", owner="alice")
    with pytest.raises(GatewayError):
        tokens.verify(token, scope="ListMeditations?conversation=a", owner="lice")


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        PageTokens("short")


def test_the_gateway_reads_the_secret_once_and_never_puts_it_in_a_message() -> None:
    config = GatewayConfig.from_environment(Environment({"STILLPOINT_PAGE_TOKEN_SECRET": SECRET}))
    assert config.page_token_secret == SECRET
    assert GatewayConfig.from_environment(Environment({})).page_token_secret is None
    short = "s3cret-but-short"
    with pytest.raises(ConfigError, match="STILLPOINT_PAGE_TOKEN_SECRET") as refused:
        GatewayConfig.from_environment(Environment({"STILLPOINT_PAGE_TOKEN_SECRET": short}))
    assert short not in str(refused.value)


def test_the_last_page_has_an_empty_token_which_reads_as_the_first() -> None:
    tokens = PageTokens(SECRET)
    assert tokens.issue(None, scope="ListMeditations", owner="alice") == ""
    assert tokens.verify("", scope="ListMeditations", owner="alice") is None
