"""PostgreSQL restarts mid-job: real processes on a throw-away cluster of their own, stopped `-m immediate`
(every connection severed) and started again. Nothing is lost, nothing is INTERNAL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from scripts.stack import Stack, free_port, running_stack
from services.cli import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.faults.logs import assert_one_whole_log

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
PG_BIN = Path("/usr/local/bin")
# Long enough that the job must write events while the database is gone; short of the recorder's bound.
OUTAGE_SECONDS = 10.0
# The job's own time (about 10 s here) plus the outage, with room to spare: still far from any hang.
SUCCEEDS_WITHIN_SECONDS = 60.0


class Cluster:
    """A PostgreSQL cluster of the test's own on a free port, started and stopped with pg_ctl."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        # initdb refuses to run as root: the cluster then belongs to the postgres user.
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        """What DATABASE_URL names."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *arguments: str) -> None:
        subprocess.run([*self._as_user, *arguments], check=True, capture_output=True, timeout=60)

    def create(self) -> None:
        """Makes the cluster's files."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_user:
            shutil.chown(self.root, "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust")

    def start(self) -> None:
        """Starts it and waits until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = str(self.root / "postgres.log")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str) -> None:
        """Stops it: `immediate` severs every connection at once, as a crash would."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A started throw-away cluster, stopped at the end whatever happened."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL's initdb is not installed in /usr/local/bin")
    # Outside pytest's tmp_path: the postgres user must be able to reach the folder.
    root = Path("/tmp") / f"stillpoint-pg-{os.getpid()}-{free_port()}"
    started = Cluster(root)
    started.create()
    started.start()
    try:
        yield started
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            started.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stack(tmp_path: Path, cluster: Cluster) -> Iterator[Stack]:
    """The three services on the cluster (the stack migrates it first)."""
    with running_stack(tmp_path / "var", extra_environment={"DATABASE_URL": cluster.url}) as started:
        yield started


async def _status_while_down(stub: gateway_grpc.GatewayServiceStub, call: str) -> grpc.StatusCode:
    """The status an RPC that needs the database gets now."""
    try:
        if call == "CreateConversation":
            await stub.CreateConversation(load_conversation(EXAMPLE), timeout=30)
        else:
            await stub.ListMeditations(gateway_pb.ListMeditationsRequest(), timeout=30)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_job_rides_out_a_postgres_restart_and_calls_meanwhile_are_unavailable(
    stack: Stack, cluster: Cluster
) -> None:
    """Property: with PostgreSQL stopped mid-job for OUTAGE_SECONDS and started again, the job succeeds with
    one whole log (no event lost or written twice), the calls made meanwhile are UNAVAILABLE (never INTERNAL
    or UNKNOWN), and the same processes serve again once it is back: their pools recover without a restart."""
    seen: list[gateway_pb.GenerateMeditationResponse] = []
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        created = await stub.CreateConversation(load_conversation(EXAMPLE))
        stream = stub.GenerateMeditation(
            gateway_pb.GenerateMeditationRequest(conversation=created.conversation.name)
        )
        async for response in stream:
            seen.append(response)
            if response.HasField("stage") and response.stage.stage == gateway_pb.STAGE_NARRATION:
                break
        stream.cancel()
        name = seen[0].accepted.meditation

        cluster.stop("immediate")
        down_since = time.monotonic()
        # Past the gateway's 2 s cache of verified keys, so the key is checked against the database too.
        await asyncio.sleep(3.0)  # letting time pass (the cache's expiry), not synchronisation
        statuses = {
            call: await _status_while_down(stub, call) for call in ("CreateConversation", "ListMeditations")
        }
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_since)))  # the outage
        cluster.start()
        restarted_at = time.monotonic()

        request = gateway_pb.WatchMeditationRequest(name=name, after_sequence=seen[-1].sequence)
        rest = [response async for response in stub.WatchMeditation(request, timeout=SUCCEEDS_WITHIN_SECONDS)]
        finished_after = time.monotonic() - restarted_at
        # The same processes serve again: CreateConversation reaches content's pool, ListMeditations the
        # gateway's.
        assert await _status_while_down(stub, "CreateConversation") == grpc.StatusCode.OK
        assert await _status_while_down(stub, "ListMeditations") == grpc.StatusCode.OK

    assert statuses == {
        "CreateConversation": grpc.StatusCode.UNAVAILABLE,
        "ListMeditations": grpc.StatusCode.UNAVAILABLE,
    }
    assert_one_whole_log(seen, rest)
    print(f"the job finished {finished_after:.1f} s after PostgreSQL was back")
    gateway_log = (stack.log_dir / "gateway.log").read_text(errors="replace")
    # The outage hit the job mid-write (else this test proves nothing), and the recorder waited it out.
    # A content call of the job's (the image stage) may still fail its attempt once the channel's own
    # retries are spent: the job's retry policy then carries it on, and the log stays whole.
    assert "not recorded" in gateway_log
