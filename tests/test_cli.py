"""The `stillpoint` command line: what it refuses before it calls anything."""

from __future__ import annotations

import pytest

from services import cli


def test_generate_refuses_a_request_id_that_is_not_a_uuid_before_calling_the_gateway(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(
            ["--gateway", "127.0.0.1:1", "generate", "--conversation", "x.json", "--request-id", "retry-1"]
        )
    assert exited.value.code == 2
    assert "'retry-1' is not a UUID" in capsys.readouterr().err


@pytest.mark.parametrize(
    "spelling",
    [
        "123E4567-E89B-42D3-A456-426614174000",
        "{123e4567-e89b-42d3-a456-426614174000}",
        "urn:uuid:123e4567-e89b-42d3-a456-426614174000",
        "123e4567e89b42d3a456426614174000",
    ],
)
def test_any_spelling_of_a_uuid_is_sent_in_its_canonical_form(spelling: str) -> None:
    assert cli._request_id(spelling) == "123e4567-e89b-42d3-a456-426614174000"


def test_without_a_request_id_none_is_sent() -> None:
    """argparse runs a string default through the option's type: the default must pass it."""
    assert cli._request_id("") == ""
