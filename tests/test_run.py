"""`make run` keeps the stack up in the foreground with a ready key, and Ctrl-C stops every process."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import sys
from pathlib import Path

import grpc
import psutil
import pytest

from scripts import run
from services.cli import gateway_channel
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
MESSAGE = gateway_pb.Message(role=gateway_pb.MESSAGE_ROLE_USER, text="A quiet morning.")


def _encoder_processes(pid: int) -> list[psutil.Process]:
    """The encoder processes among `pid`'s descendants."""
    return [
        process
        for process in psutil.Process(pid).children(recursive=True)
        if "services.media.encoder_process" in process.cmdline()
    ]


def _free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


async def _read_until(stream: asyncio.StreamReader, marker: str, timeout_seconds: float) -> str:
    printed = ""
    async with asyncio.timeout(timeout_seconds):
        while marker not in printed:
            line = await stream.readline()
            if not line:
                break
            printed += line.decode()
    return printed


async def test_run_prints_a_working_key_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    if not all(_free(port) for port in run.PORTS.values()):
        pytest.skip("the ports make run uses (50051–50053) are taken on this machine")
    environment = {**os.environ, "STILLPOINT_VAR_DIR": str(tmp_path / "var"), "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.run",
        cwd=ROOT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        printed = await _read_until(process.stdout, "Ctrl-C stops everything", 120)
        key = re.search(r"export STILLPOINT_API_KEY=(\S+)", printed)
        assert key is not None, printed
        async with gateway_channel("127.0.0.1:50051", key.group(1)) as channel:
            created = await gateway_grpc.GatewayServiceStub(channel).CreateConversation(
                gateway_pb.CreateConversationRequest(messages=[MESSAGE]), timeout=30
            )
        assert created.conversation.name.startswith("conversations/")
        async with grpc.aio.insecure_channel("127.0.0.1:50051") as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gateway_grpc.GatewayServiceStub(anonymous).CreateConversation(
                    gateway_pb.CreateConversationRequest(messages=[MESSAGE]), timeout=30
                )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The certificate it prints gets an operator's command past content's check of the caller.
        certificate = re.search(r"export (STILLPOINT_INTERNAL_CA_FILE=.*)", printed)
        assert certificate is not None, printed
        stats = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "stats",
            "--content",
            "127.0.0.1:50052",
            cwd=ROOT,
            env={**environment, **dict(pair.split("=", 1) for pair in shlex.split(certificate.group(1)))},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        answered = (await asyncio.wait_for(stats.communicate(), 60))[0].decode()
        assert stats.returncode == 0 and "transcripts" in answered, answered
        # Media encodes live narrations in an encoder process of its own, which stops with it.
        encoders = _encoder_processes(process.pid)
        assert len(encoders) == 1, encoders
        process.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(process.stdout.read(), 60)).decode()
        assert await asyncio.wait_for(process.wait(), 30) == 0, rest
        assert "Services stopped." in rest
        assert all(_free(port) for port in run.PORTS.values())
        assert not any(encoder.is_running() for encoder in encoders)
    finally:
        if process.returncode is None:
            # Ctrl-C first, as a person would: a SIGKILL would leave its three services running on the
            # fixed ports, to fail whatever uses them next.
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
