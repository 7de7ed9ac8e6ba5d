"""`python -m bench.authentication`: the latency that verifying the caller adds to each gateway call.

Two measurements, written to OUTPUT/authentication.{json,md}, never compared with a threshold:
- `Authenticator.owner_of` alone, in a loop, for every kind of credential the gateway accepts (an API key
  from the verification cache and from the database, Supabase HS256, ES256 and RS256 tokens) and for a
  refused one;
- a cheap authenticated RPC over gRPC end to end, on a server that checks an API key and on the same server
  with authentication disabled (the difference is the latency authentication adds per call), and the
  check itself timed where the interceptor makes it inside that server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.data_plane import (
    DEFAULT_POSTGRES_ADMIN_DSN,
    DataPlaneUnavailableError,
    create_database,
    drop_database,
)
from bench.percentiles import summarize
from services import serving
from services.database import create_engine
from services.gateway import migrate as gateway_migrate
from services.gateway.api_keys import VERIFICATION_CACHE_SECONDS, ApiKeyStore
from services.gateway.authentication import (
    LOCAL_OWNER,
    Authenticator,
    CredentialsError,
    JwksKeys,
    SupabaseAuthSettings,
    SupabaseTokens,
)
from services.gateway.servicer import AuthenticationInterceptor

DEFAULT_CALLS = 2000
# A PostgreSQL round trip (with the pool's pre-ping) costs about a millisecond: fewer keep the run short.
DEFAULT_POSTGRES_CALLS = 500
KEY_OWNER = "bench-owner"
TOKEN_SUBJECT = "bench-user"
# Served by httpx.MockTransport: the JWKS never leaves the process, and `.invalid` can never resolve.
PROJECT_URL = "https://bench-project.supabase.invalid"
LEGACY_SECRET = "a-legacy-project-jwt-secret-of-32-characters-or-more"
ES256_KID = "bench-es256"
RS256_KID = "bench-rs256"
# Statistics kept per case, in microseconds (`count` is the number of timed calls).
_STATISTICS = ("p50", "p95", "mean", "min", "max", "count")
# The RPC timed end to end: reflection goes through the authentication interceptor (only health does not)
# and answers from memory, so the difference between the two servers is authentication alone.
TIMED_RPC = "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo, one list_services request"


class BenchError(RuntimeError):
    """A timed call did not do what its case says (a valid credential refused, a forged one accepted)."""


@dataclass(frozen=True)
class AuthenticationBenchSettings:
    """How many calls each case times, where PostgreSQL is (None: not measured) and where the report goes."""

    calls: int = DEFAULT_CALLS
    postgres_calls: int = DEFAULT_POSTGRES_CALLS
    output_dir: Path = Path("var/bench")
    postgres_admin_dsn: str | None = DEFAULT_POSTGRES_ADMIN_DSN


@dataclass(frozen=True)
class Case:
    """One kind of credential, and the time `owner_of` took for it on every timed call (µs)."""

    key: str
    title: str
    samples_microseconds: list[float]

    def to_json_object(self) -> dict[str, Any]:
        return {"case": self.key, "title": self.title, **_statistics(self.samples_microseconds)}


class SteppingClock:
    """A clock that moves on by the verification cache's lifetime each time it is read: every lookup finds
    its cached answer expired and asks the database, without waiting for time to pass."""

    def __init__(self) -> None:
        self._now = 0.0

    def __call__(self) -> float:
        self._now += VERIFICATION_CACHE_SECONDS
        return self._now


def _stopped_clock() -> float:
    """A clock that never moves: once verified, a key is answered from the cache for the whole run."""
    return 0.0


def _statistics(samples: Sequence[float]) -> dict[str, float | int | None]:
    summary = summarize(samples)
    return {name: summary[name] for name in _STATISTICS}


def _warmup_calls(calls: int) -> int:
    # Untimed calls first: imports, the first database connection and the JWKS fetch are not per-call costs.
    return min(100, max(1, calls // 10))


async def time_calls(call: Callable[[], Awaitable[None]], calls: int) -> list[float]:
    """Runs `call` a few times untimed, then `calls` times one after another; each call's time in µs."""
    for _ in range(_warmup_calls(calls)):
        await call()
    samples: list[float] = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def _accepting(authenticator: Authenticator, credential: str, owner: str) -> Callable[[], Awaitable[None]]:
    authorization = f"Bearer {credential}"

    async def call() -> None:
        found = await authenticator.owner_of(authorization)
        if found != owner:
            raise BenchError(f"expected the owner {owner!r}, got {found!r}")

    return call


def _refusing(authenticator: Authenticator, credential: str) -> Callable[[], Awaitable[None]]:
    authorization = f"Bearer {credential}"

    async def call() -> None:
        try:
            await authenticator.owner_of(authorization)
        except CredentialsError:
            return
        raise BenchError("a token with a bad signature was accepted")

    return call


async def open_gateway_database(database_url: str) -> AsyncEngine:
    """The gateway's engine, as the gateway makes it (pool, pre-ping), on its migrated tables."""
    engine = create_engine(database_url, application_name="stillpoint-bench-authentication")
    try:
        await gateway_migrate.HISTORY.upgrade(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine


async def cached_api_key_case(engine: AsyncEngine, calls: int) -> Case:
    """An API key verified moments ago: hashed and answered from the verification cache."""
    key = (await ApiKeyStore(engine).create(KEY_OWNER)).key
    authenticator = Authenticator(api_keys=ApiKeyStore(engine, clock=_stopped_clock))
    samples = await time_calls(_accepting(authenticator, key, KEY_OWNER), calls)
    return Case("api_key_cached", "API key, verification cache hit", samples)


async def expired_api_key_case(engine: AsyncEngine, database: str, calls: int) -> Case:
    """An API key whose cached verification has expired: every call reads the `api_keys` table."""
    key = (await ApiKeyStore(engine).create(KEY_OWNER)).key
    authenticator = Authenticator(api_keys=ApiKeyStore(engine, clock=SteppingClock()))
    samples = await time_calls(_accepting(authenticator, key, KEY_OWNER), calls)
    return Case(f"api_key_expired_{database.lower()}", f"API key, cache expired: {database} lookup", samples)


def _public_jwk(jwk_json: str, kid: str, algorithm: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwk_json)
    return {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}


async def token_cases(calls: int) -> tuple[list[Case], int]:
    """Supabase access tokens of a project with the legacy secret and an ES256 and an RS256 key in its
    JWKS (cached after the first call), and a token whose signature is not the project's; also how many
    times the JWKS was fetched (one: every timed call found its key in the cache)."""
    es256 = ec.generate_private_key(ec.SECP256R1())
    rs256 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    impostor = ec.generate_private_key(ec.SECP256R1())
    jwks = {
        "keys": [
            _public_jwk(jwt.algorithms.ECAlgorithm.to_jwk(es256.public_key()), ES256_KID, "ES256"),
            _public_jwk(jwt.algorithms.RSAAlgorithm.to_jwk(rs256.public_key()), RS256_KID, "RS256"),
        ]
    }
    settings = SupabaseAuthSettings(url=PROJECT_URL, jwt_secret=LEGACY_SECRET)
    fetches = 0

    def serve_jwks(request: httpx.Request) -> httpx.Response:
        nonlocal fetches
        if str(request.url) != settings.jwks_url:
            return httpx.Response(404)
        fetches += 1
        return httpx.Response(200, json=jwks)

    claims = {
        "aud": "authenticated",
        "iss": settings.issuer,
        "sub": TOKEN_SUBJECT,
        "role": "authenticated",
        # Long enough for any run; `exp` is checked on every call all the same.
        "exp": int(time.time()) + 24 * 3600,
    }
    hs256_token = jwt.encode(claims, LEGACY_SECRET, algorithm="HS256")
    es256_token = jwt.encode(claims, es256, algorithm="ES256", headers={"kid": ES256_KID})
    rs256_token = jwt.encode(claims, rs256, algorithm="RS256", headers={"kid": RS256_KID})
    forged_token = jwt.encode(claims, impostor, algorithm="ES256", headers={"kid": ES256_KID})
    async with httpx.AsyncClient(transport=httpx.MockTransport(serve_jwks)) as http:
        keys = JwksKeys(
            settings.jwks_url, http, refetch_cooldown_seconds=settings.jwks_refetch_cooldown_seconds
        )
        authenticator = Authenticator(api_keys=None, supabase=SupabaseTokens(settings, keys))
        cases = [
            Case(
                "supabase_hs256",
                "Supabase token, HS256 (legacy secret)",
                await time_calls(_accepting(authenticator, hs256_token, TOKEN_SUBJECT), calls),
            ),
            Case(
                "supabase_es256",
                "Supabase token, ES256 (JWKS cached)",
                await time_calls(_accepting(authenticator, es256_token, TOKEN_SUBJECT), calls),
            ),
            Case(
                "supabase_rs256",
                "Supabase token, RS256 (JWKS cached)",
                await time_calls(_accepting(authenticator, rs256_token, TOKEN_SUBJECT), calls),
            ),
            Case(
                "refused_bad_signature",
                "refused: ES256 token, bad signature",
                await time_calls(_refusing(authenticator, forged_token), calls),
            ),
        ]
    return cases, fetches


class TimedAuthenticator(Authenticator):
    """The gateway's Authenticator, recording how long each `owner_of` takes where the interceptor calls
    it: inside a server, between RPCs, with the CPU's caches cold from everything else a call runs."""

    def __init__(self, *, api_keys: ApiKeyStore | None, is_disabled: bool = False) -> None:
        super().__init__(api_keys=api_keys, is_disabled=is_disabled)
        self.samples_microseconds: list[float] = []

    async def owner_of(self, authorization: str | None) -> str:
        started = time.perf_counter_ns()
        try:
            return await super().owner_of(authorization)
        finally:
            self.samples_microseconds.append((time.perf_counter_ns() - started) / 1000)


async def _reflection_server(authenticator: Authenticator) -> serving.RunningServer:
    """A real server with reflection and health only, behind the gateway's authentication interceptor."""
    return await serving.start_server(
        service_names=(),
        register=lambda _server: None,
        address="127.0.0.1:0",
        interceptors=[AuthenticationInterceptor(authenticator)],
    )


def _list_services(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> Callable[[], Awaitable[None]]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")

    async def call() -> None:
        responses = [
            response async for response in stub.ServerReflectionInfo(iter([request]), metadata=metadata)
        ]
        if len(responses) != 1 or not responses[0].list_services_response.service:
            raise BenchError("reflection did not list the services")

    return call


async def grpc_comparison(engine: AsyncEngine, calls: int) -> dict[str, Any]:
    """The timed RPC on a server checking an API key and on one with authentication disabled, the calls
    interleaved (and their order alternated) so that drift in the machine's load falls on both alike."""
    key = (await ApiKeyStore(engine).create(KEY_OWNER)).key
    # The real clock, as in the gateway: the key is read from the database once per cache lifetime.
    checking_authenticator = TimedAuthenticator(api_keys=ApiKeyStore(engine))
    checking = await _reflection_server(checking_authenticator)
    try:
        disabled = await _reflection_server(TimedAuthenticator(api_keys=None, is_disabled=True))
    except BaseException:
        await checking.stop(0)
        raise
    # Both servers get the same metadata (the disabled one lets every caller in as LOCAL_OWNER), so the
    # calls differ in the check alone, not in the bytes sent.
    metadata = (("authorization", f"Bearer {key}"),)
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{checking.port}") as checking_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{disabled.port}") as disabled_channel,
        ):
            with_key = _list_services(checking_channel, metadata)
            without = _list_services(disabled_channel, metadata)
            for _ in range(_warmup_calls(calls)):
                await with_key()
                await without()
            checking_authenticator.samples_microseconds.clear()
            samples: dict[str, list[float]] = {"api_key": [], "authentication_disabled": []}
            for index in range(calls):
                order = (("api_key", with_key), ("authentication_disabled", without))
                for name, call in order if index % 2 == 0 else reversed(order):
                    started = time.perf_counter_ns()
                    await call()
                    samples[name].append((time.perf_counter_ns() - started) / 1000)
    finally:
        await checking.stop(0)
        await disabled.stop(0)
    with_key_statistics = _statistics(samples["api_key"])
    disabled_statistics = _statistics(samples["authentication_disabled"])
    added: dict[str, float] = {}
    for name in ("p50", "p95", "mean"):
        measured, baseline = with_key_statistics[name], disabled_statistics[name]
        assert measured is not None and baseline is not None  # both lists hold `calls` samples
        added[name] = measured - baseline
    return {
        "rpc": TIMED_RPC,
        "disabled_owner": LOCAL_OWNER,
        "api_key": with_key_statistics,
        "authentication_disabled": disabled_statistics,
        "added_latency_per_call": added,
        "owner_of_in_server": _statistics(checking_authenticator.samples_microseconds),
    }


async def run_authentication_bench(settings: AuthenticationBenchSettings) -> dict[str, Any]:
    """Measures every case, writes the report and returns it."""
    started = time.perf_counter()
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="stillpoint-bench-authentication-") as scratch:
        engine = await open_gateway_database(f"sqlite+aiosqlite:///{Path(scratch) / 'gateway.db'}")
        try:
            cases = [
                await cached_api_key_case(engine, settings.calls),
                await expired_api_key_case(engine, "SQLite", settings.calls),
            ]
            postgres = await _postgres_case(settings, skipped)
            if postgres is not None:
                cases.append(postgres)
            tokens, jwks_fetches = await token_cases(settings.calls)
            cases += tokens
            comparison = await grpc_comparison(engine, settings.calls)
        finally:
            await engine.dispose()
    report = {
        "unit": "microseconds",
        "calls": settings.calls,
        "postgres_calls": settings.postgres_calls,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "owner_of": [case.to_json_object() for case in cases],
        "jwks_fetches": jwks_fetches,
        "grpc": comparison,
        "skipped": skipped,
        "wall_seconds": time.perf_counter() - started,
    }
    write_report(report, settings.output_dir)
    return report


async def _postgres_case(settings: AuthenticationBenchSettings, skipped: list[str]) -> Case | None:
    """The expired-cache case on a fresh PostgreSQL database (dropped afterwards); None, with a note, when
    PostgreSQL was not asked for or does not answer."""
    if settings.postgres_admin_dsn is None:
        skipped.append("PostgreSQL: not measured (--no-postgres)")
        return None
    try:
        url = await create_database(settings.postgres_admin_dsn)
    except DataPlaneUnavailableError as error:
        note = f"PostgreSQL: not measured ({error})"
        print(f"note: {note}", file=sys.stderr)
        skipped.append(note)
        return None
    try:
        engine = await open_gateway_database(url)
        try:
            return await expired_api_key_case(engine, "PostgreSQL", settings.postgres_calls)
        finally:
            await engine.dispose()
    finally:
        await drop_database(settings.postgres_admin_dsn, url)


def write_report(report: Mapping[str, Any], output_dir: Path) -> None:
    """OUTPUT/authentication.json (stable, for machines) and OUTPUT/authentication.md (for people)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "authentication.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (output_dir / "authentication.md").write_text(render_markdown(report))


def _microseconds(value: float | None, *, is_signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.1f}" if is_signed else f"{value:.1f}"


def _row(title: str, statistics: Mapping[str, Any], *, is_difference: bool = False) -> str:
    count = "" if is_difference else str(statistics["count"])
    cells = (_microseconds(statistics[name], is_signed=is_difference) for name in ("p50", "p95", "mean"))
    return f"| {title} | {count} | {' | '.join(cells)} |"


def render_markdown(report: Mapping[str, Any]) -> str:
    """The two tables, in microseconds per call, and what was not measured."""
    comparison = report["grpc"]
    header = ("| calls | p50 µs | p95 µs | mean µs |", "|---|---:|---:|---:|---:|")
    lines = [
        "# Authentication latency per call",
        "",
        "`Authenticator.owner_of` alone, called in a loop (the CPU's caches warm: a floor), µs per call:",
        "",
        f"| credential {header[0]}",
        header[1],
        *(_row(case["title"], case) for case in report["owner_of"]),
        "",
        f"End to end over gRPC on 127.0.0.1 ({comparison['rpc']}), µs per call:",
        "",
        f"| server {header[0]}",
        header[1],
        _row("authentication disabled", comparison["authentication_disabled"]),
        _row("API key checked", comparison["api_key"]),
        _row("**added latency per call**", comparison["added_latency_per_call"], is_difference=True),
        _row("`owner_of` inside the API-key server", comparison["owner_of_in_server"]),
        "",
        "The two servers' calls are interleaved, so drift in the machine's load falls on both alike; a "
        "difference smaller than the noise (often p95 and mean on a shared machine) can come out either "
        "sign. The last row times the check itself where the interceptor makes it, between RPCs.",
    ]
    if report["skipped"]:
        lines += ["", *(f"- {note}" for note in report["skipped"])]
    return "\n".join(lines) + "\n"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_settings(argv: Sequence[str] | None = None) -> AuthenticationBenchSettings:
    """Reads the command line (and STILLPOINT_TEST_POSTGRES_DSN, as the tests and `make bench` do)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.authentication", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--calls",
        type=_positive,
        default=DEFAULT_CALLS,
        help=f"timed calls per case (default {DEFAULT_CALLS})",
    )
    parser.add_argument(
        "--postgres-calls",
        type=_positive,
        default=DEFAULT_POSTGRES_CALLS,
        help=f"timed calls of the PostgreSQL lookup (default {DEFAULT_POSTGRES_CALLS})",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("var/bench"), help="default var/bench")
    parser.add_argument(
        "--postgres-admin-dsn",
        help=(
            "where a fresh database is made for the PostgreSQL case and dropped afterwards (default "
            f"STILLPOINT_TEST_POSTGRES_DSN or {DEFAULT_POSTGRES_ADMIN_DSN}); "
            "skipped with a note if unreachable"
        ),
    )
    parser.add_argument("--no-postgres", action="store_true", help="measure the SQLite lookup only")
    arguments = parser.parse_args(argv)
    admin_dsn = None
    if not arguments.no_postgres:
        admin_dsn = arguments.postgres_admin_dsn or os.environ.get(
            "STILLPOINT_TEST_POSTGRES_DSN", DEFAULT_POSTGRES_ADMIN_DSN
        )
    return AuthenticationBenchSettings(
        calls=arguments.calls,
        postgres_calls=arguments.postgres_calls,
        output_dir=arguments.output_dir,
        postgres_admin_dsn=admin_dsn,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    try:
        report = asyncio.run(run_authentication_bench(settings))
    except BenchError as error:
        print(f"bench.authentication: {error}", file=sys.stderr)
        return 1
    print(render_markdown(report), end="")
    print(f"({report['wall_seconds']:.1f} s; written to {settings.output_dir}/authentication.{{json,md}})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
