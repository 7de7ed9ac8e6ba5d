"""Reads the content service's reviewed word and pattern lists, the data files under services/content/data."""

from __future__ import annotations

import re
from importlib import resources


def read_lines(file_name: str) -> list[str]:
    """Returns the entries of a data file: one per line, with `#` comments and blank lines dropped."""
    text = resources.files("services.content").joinpath("data", file_name).read_text(encoding="utf-8")
    entries = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [entry for entry in entries if entry]


def read_word_list(file_name: str) -> frozenset[str]:
    """Returns a data file's words, lowercased."""
    return frozenset(entry.lower() for entry in read_lines(file_name))


def read_pattern_list(file_name: str) -> tuple[re.Pattern[str], ...]:
    """Returns a data file's regular expressions, compiled case-insensitively (a `#` inside a pattern is not
    supported: it starts the line's comment)."""
    return tuple(re.compile(entry, re.IGNORECASE) for entry in read_lines(file_name))
