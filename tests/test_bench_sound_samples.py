"""The listening samples: the same narration at each quality, under names that do not say which."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import av
import pytest

from bench.sound_samples import narrate, write_samples
from services.media.speech import Narration

_SCRIPT = (
    "Let your shoulders soften as you breathe in slowly. [pause 2s] "
    "Notice the air, cool as it enters and warm as it leaves. "
    "Rest here for a moment, with nothing to fix."
)


@pytest.fixture(scope="module")
def spoken() -> list[Narration]:
    # Spoken once for the module, in its own event loop (narrate is what the command runs).
    return asyncio.run(narrate(_SCRIPT, "espeak"))


def _decoded_samples(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(frame.samples for frame in container.decode(audio=0))


def test_each_quality_is_one_blind_file_of_the_same_narration(
    spoken: list[Narration], tmp_path: Path
) -> None:
    assert len(spoken) == 3  # one request a sentence, as the live narration asks

    key = write_samples(spoken, (2.0, 0.8), tmp_path, seed=7)

    assert sorted(key) == ["A.aac", "B.aac"]
    assert json.loads((tmp_path / "key.json").read_text()) == key
    assert sorted(entry["aac_quality"] for entry in key.values()) == [0.8, 2.0]
    by_quality = {entry["aac_quality"]: name for name, entry in key.items()}
    # The same sound to the sample: only the quality differs, and the lower one takes fewer bytes.
    lengths = {name: _decoded_samples(tmp_path / name) for name in key}
    assert len(set(lengths.values())) == 1, lengths
    assert key[by_quality[0.8]]["kbit_per_second"] < key[by_quality[2.0]]["kbit_per_second"]
    assert (tmp_path / by_quality[0.8]).stat().st_size < (tmp_path / by_quality[2.0]).stat().st_size


def test_the_order_is_the_seeds_so_a_listener_cannot_learn_it(
    spoken: list[Narration], tmp_path: Path
) -> None:
    qualities = (2.0, 1.8, 1.5, 1.2, 1.0, 0.8)
    orders = {
        seed: tuple(
            entry["aac_quality"]
            for _, entry in sorted(
                write_samples(spoken[:1], qualities, tmp_path / str(seed), seed=seed).items()
            )
        )
        for seed in (1, 2, 3)
    }
    again = write_samples(spoken[:1], qualities, tmp_path / "again", seed=1)
    assert tuple(entry["aac_quality"] for _, entry in sorted(again.items())) == orders[1]
    # Some seed puts the qualities out of their given order, and the seeds do not all agree.
    assert any(order != qualities for order in orders.values())
    assert len(set(orders.values())) > 1


def test_it_refuses_what_it_cannot_make_blind(spoken: list[Narration], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="different"):
        write_samples(spoken, (2.0, 2.0), tmp_path, seed=1)
    with pytest.raises(ValueError, match="nothing"):
        write_samples([], (2.0,), tmp_path, seed=1)
