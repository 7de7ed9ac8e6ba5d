"""`stillpoint jobs dead-letters` lists dead-lettered meditations from the gateway's database, never any
conversation text."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services import cli
from services.database import create_engine
from services.gateway import migrate as gateway_migrate
from services.gateway.jobs.store import JobStore
from services.gateway.models import JobChanges, MeditationOptions, MeditationState

CONVERSATION = "conversations/0123456789abcdef"
SECRET_TEXT = "I have never told anyone about the lake house"


async def _jobs(database_url: str) -> list[str]:
    """Two dead-lettered jobs (the second newer), one that failed at once, one running."""
    engine = create_engine(database_url)
    try:
        await gateway_migrate.HISTORY.upgrade(engine)
        store = JobStore(engine)
        names = []
        for owner in ("alice", "bob", "carol", "dave"):
            made, _ = await store.create(
                owner=owner,
                conversation=CONVERSATION,
                request_id="",
                options=MeditationOptions(),
                queue_lease_seconds=60,
            )
            names.append(made.name)
        for name, reason in [
            (names[0], "gave up after 3 attempts: the media service is unavailable"),
            (names[1], "gave up after 2 attempts: the image could not be decoded\n(ffmpeg said no)"),
            (names[2], "a stage ran past its deadline"),
        ]:
            changes = JobChanges(state=MeditationState.FAILED, transcript=SECRET_TEXT, failure_message=reason)
            await store.record_event(name, 1, b"{}", changes)
        await store.mark_dead_lettered(names[0], 3)
        await store.mark_dead_lettered(names[1], 2)
        await store.mark_dead_lettered(names[3], 1)  # still running: not marked
        return names
    finally:
        await engine.dispose()


def test_dead_letters_are_listed_newest_first_with_owner_time_attempts_and_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    names = asyncio.run(_jobs(database_url))
    monkeypatch.setenv("DATABASE_URL", database_url)

    assert cli.main(["jobs", "dead-letters"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [[names[1], "bob"], [names[0], "alice"]]
    assert "attempts=2" in lines[0]
    assert "the image could not be decoded (ffmpeg said no)" in lines[0]  # one line each
    assert "attempts=3  gave up after 3 attempts: the media service is unavailable" in lines[1]
    assert SECRET_TEXT not in "\n".join(lines)

    assert cli.main(["jobs", "dead-letters", "--limit", "1"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [names[1]]


def test_no_dead_letters_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"

    async def migrate() -> None:
        engine = create_engine(database_url)
        await gateway_migrate.HISTORY.upgrade(engine)
        await engine.dispose()

    asyncio.run(migrate())
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert cli.main(["jobs", "dead-letters"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no dead-lettered meditations" in captured.err


def test_a_limit_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["jobs", "dead-letters", "--limit", "0"])
    assert exited.value.code == 2
    assert "not a positive whole number" in capsys.readouterr().err
