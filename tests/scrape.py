"""Reads a process's /metrics over HTTP, as Prometheus does, for the end-to-end tests."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

# Every sample of one scrape: its name, its labels and its value.
Samples = list[tuple[str, Mapping[str, str], float]]


def scrape(url: str) -> Samples:
    """Every sample `url` (a /metrics endpoint) serves now."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(key) == want for key, want in labels.items())
    )


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    """The values `label` takes among `name`'s samples."""
    return {labels[label] for sample_name, labels, _ in samples if sample_name == name and label in labels}
