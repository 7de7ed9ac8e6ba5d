"""A gateway that accepts Supabase Auth users (keys made here, served as a JWKS on 127.0.0.1) and API keys."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services import serving
from services.gateway.api_keys import ApiKeyStore
from services.gateway.authentication import Authenticator, JwksKeys, SupabaseAuthSettings, SupabaseTokens
from services.gateway.backends import ContentClient, MediaClient
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.pipeline import MeditationPipeline, StageTimeouts
from services.gateway.servicer import AuthenticationInterceptor, GatewayServicer
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.conftest import GATEWAY_SERVICE

LEGACY_SECRET = "a-legacy-project-jwt-secret-of-32-characters-or-more"


@dataclass
class SigningKey:
    """An ES256 key of the project, with the `kid` its JWKS names it by."""

    kid: str
    private: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}


class JwksServer:
    """Serves `/auth/v1/.well-known/jwks.json` of a pretend Supabase project; the keys can be rotated."""

    def __init__(self) -> None:
        self.keys: list[SigningKey] = []
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/auth/v1/.well-known/jwks.json":
                    self.send_error(404)
                    return
                owner.fetches += 1
                body = json.dumps({"keys": [key.public_jwk() for key in owner.keys]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Project:
    """The pretend Supabase project: its URL, its JWKS server and how to sign its users' tokens."""

    jwks: JwksServer

    @property
    def issuer(self) -> str:
        return f"{self.jwks.url}/auth/v1"

    def token(
        self,
        subject: str | None,
        *,
        key: SigningKey | None = None,
        expires_in_seconds: float = 3600,
        audience: str = "authenticated",
        issuer: str | None = None,
    ) -> str:
        """An access token as Supabase Auth issues them, signed by `key` (the project's first by default)."""
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": issuer or self.issuer,
            "exp": int(time.time() + expires_in_seconds),
            "role": "authenticated",
        }
        if subject is not None:
            claims["sub"] = subject
        signer = key or self.jwks.keys[0]
        return jwt.encode(claims, signer.private, algorithm="ES256", headers={"kid": signer.kid})


@pytest.fixture
def project() -> Iterator[Project]:
    """A Supabase project with one signing key."""
    with JwksServer() as server:
        server.keys = [SigningKey("key-1")]
        yield Project(server)


@pytest.fixture
async def supabase_gateway(
    content_channel: grpc.aio.Channel,
    media_channel: grpc.aio.Channel,
    job_store: JobStore,
    api_keys: ApiKeyStore,
    project: Project,
) -> AsyncIterator[str]:
    """A gateway accepting the project's users (asymmetric keys only) and API keys; yields its address."""
    timeouts = StageTimeouts()
    content = ContentClient(content_channel, timeouts)
    media = MediaClient(media_channel, timeouts)
    jobs = MeditationJobs(
        job_store,
        content,
        MeditationPipeline(content, media, timeouts),
        media=media,
        poll_interval_seconds=0.05,
    )
    settings = SupabaseAuthSettings(url=project.jwks.url, jwks_refetch_cooldown_seconds=0.0)
    async with httpx.AsyncClient() as http:
        jwks = JwksKeys(settings.jwks_url, http, refetch_cooldown_seconds=0.0)
        authenticator = Authenticator(api_keys=api_keys, supabase=SupabaseTokens(settings, jwks))
        running = await serving.start_server(
            service_names=[GATEWAY_SERVICE],
            register=lambda server: gateway_grpc.add_GatewayServiceServicer_to_server(
                GatewayServicer(content, jobs), server
            ),
            address="127.0.0.1:0",
            interceptors=[AuthenticationInterceptor(authenticator)],
        )
        yield f"127.0.0.1:{running.port}"
        await running.stop(0)
        await jobs.close()
