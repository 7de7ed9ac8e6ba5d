"""Off-peak pre-generation: when it runs, and which prompts it renders."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.content.image_prompts import all_image_prompts
from services.content.pregeneration import read_prompt_list, seconds_until_hour


@pytest.mark.parametrize(
    ("now", "hour", "expected_seconds"),
    [
        (datetime(2026, 11, 21, 2, 30, tzinfo=UTC), 3, 1800),
        (datetime(2026, 11, 21, 3, 0, tzinfo=UTC), 3, 86_400),
        (datetime(2026, 11, 21, 23, 59, tzinfo=UTC), 0, 60),
    ],
)
def test_the_nightly_run_waits_for_the_next_off_peak_hour(
    now: datetime, hour: int, expected_seconds: float
) -> None:
    assert seconds_until_hour(hour, now) == expected_seconds


def test_the_default_list_is_every_prompt_the_builder_can_make() -> None:
    assert read_prompt_list(None) == all_image_prompts()
    assert len(read_prompt_list(None)) > 10


def test_a_prompt_file_skips_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# common prompts\nPeaceful zen garden with flowing water\n\n  Serene mountain lake  \n")
    assert read_prompt_list(path) == ["Peaceful zen garden with flowing water", "Serene mountain lake"]
