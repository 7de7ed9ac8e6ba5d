"""Who is calling: Supabase Auth access tokens and Stillpoint API keys, verified locally on every call.

The owner of everything a call creates or reads is the caller this module names: a Supabase user's `sub`,
or the owner an API key was made for. Tokens are verified here, never by a call to Supabase per request:
asymmetric keys (ES256, RS256) come from the project's JWKS, cached and refetched on an unknown `kid` at
most once per cooldown (a flood of made-up `kid`s cannot hammer the JWKS); projects on the legacy shared
secret verify HS256 with it. A refusal never says which check failed, and no token is ever logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from services.gateway.api_keys import API_KEY_PREFIX, ApiKeyStore
from services.gateway.errors import FailureKind, GatewayError

logger = logging.getLogger(__name__)

_ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "RS256"})
# Clocks drift; a token a few seconds past `exp` is still the user's.
_LEEWAY_SECONDS = 30
MISSING_CREDENTIALS = (
    "send `authorization: Bearer <credential>` metadata: a Stillpoint API key (`stillpoint keys create`) "
    "or a Supabase access token"
)
REFUSED_CREDENTIALS = (
    "the credential in `authorization` was not accepted: sign in again, or use a valid API key"
)
# The owner of every resource when authentication is explicitly disabled (local experiments only).
LOCAL_OWNER = "local"

_caller: contextvars.ContextVar[str] = contextvars.ContextVar("stillpoint_caller")


def caller() -> str:
    """The authenticated owner of the call being served (set before any handler runs)."""
    try:
        return _caller.get()
    except LookupError:
        raise GatewayError(FailureKind.INTERNAL, "the call was not authenticated") from None


def set_caller(owner: str) -> None:
    """Records the authenticated owner for the rest of the call (the call's own task and context)."""
    _caller.set(owner)


class CredentialsError(GatewayError):
    """Missing or refused credentials: UNAUTHENTICATED, with a message that helps a user and not a forger."""

    def __init__(self, message: str) -> None:
        super().__init__(FailureKind.UNAUTHENTICATED, message)


@dataclass(frozen=True)
class SupabaseAuthSettings:
    """The Supabase project whose users may call, and how its tokens are signed."""

    url: str
    # The legacy shared secret (HS256); None when the project signs with asymmetric keys only.
    jwt_secret: str | None = None
    # Whether the project's JWKS is consulted (asymmetric keys).
    is_jwks_used: bool = True
    jwks_refetch_cooldown_seconds: float = 30.0

    @property
    def issuer(self) -> str:
        """The `iss` every accepted token carries."""
        return f"{self.url.rstrip('/')}/auth/v1"

    @property
    def jwks_url(self) -> str:
        """Where the project publishes its public signing keys."""
        return f"{self.issuer}/.well-known/jwks.json"


class JwksKeys:
    """The project's public signing keys by `kid`, fetched from its JWKS with an async client."""

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        refetch_cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._http = http
        self._cooldown_seconds = refetch_cooldown_seconds
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._fetching = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key with this `kid`; an unknown one triggers a refetch, at most once per cooldown."""
        if kid in self._keys:
            return self._keys[kid]
        async with self._fetching:
            if kid not in self._keys and self._may_refetch():
                await self._fetch()
        return self._keys.get(kid)

    def _may_refetch(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._cooldown_seconds

    async def _fetch(self) -> None:
        self._fetched_at = self._clock()
        try:
            response = await self._http.get(self._url, timeout=5.0, follow_redirects=False)
            response.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(response.json()).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWKSetError) as error:
            # Keep the keys we have: a JWKS that hiccups must not log everyone out.
            logger.warning("could not fetch the JWKS at %s: %s", self._url, type(error).__name__)
            return
        # Replaced, not merged: a key the project removed is refused from now on.
        self._keys = {key.key_id: key for key in keys if key.key_id}


class SupabaseTokens:
    """Verifies Supabase Auth access tokens: signature, algorithm, `exp`, `iss`, `aud` and `sub`."""

    def __init__(self, settings: SupabaseAuthSettings, jwks: JwksKeys | None) -> None:
        self._settings = settings
        self._jwks = jwks

    async def owner_of(self, token: str) -> str:
        """The token's `sub`; CredentialsError for anything not a valid access token of the project."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise CredentialsError(REFUSED_CREDENTIALS) from None
        algorithm = header.get("alg")
        key: Any
        if algorithm in _ASYMMETRIC_ALGORITHMS and self._jwks is not None:
            kid = header.get("kid")
            found = await self._jwks.key(kid) if isinstance(kid, str) else None
            # The key decides the algorithm, never the token: a key of another type is a refusal.
            if found is None or found.algorithm_name != algorithm:
                raise CredentialsError(REFUSED_CREDENTIALS)
            key = found.key
        elif algorithm == "HS256" and self._settings.jwt_secret:
            key = self._settings.jwt_secret
        else:
            # `none`, HS256 without a configured secret (key confusion), anything else.
            raise CredentialsError(REFUSED_CREDENTIALS)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience="authenticated",
                issuer=self._settings.issuer,
                leeway=_LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError:
            raise CredentialsError(REFUSED_CREDENTIALS) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise CredentialsError(REFUSED_CREDENTIALS)
        return subject


class Authenticator:
    """Names the owner of a call from its `authorization` metadata."""

    def __init__(
        self,
        *,
        api_keys: ApiKeyStore | None,
        supabase: SupabaseTokens | None = None,
        is_disabled: bool = False,
    ) -> None:
        self._api_keys = api_keys
        self._supabase = supabase
        self._is_disabled = is_disabled

    @property
    def is_disabled(self) -> bool:
        """Whether every call is let in as the local owner (STILLPOINT_AUTH=disabled)."""
        return self._is_disabled

    async def owner_of(self, authorization: str | None) -> str:
        """The caller's owner name; CredentialsError when the metadata is missing or not accepted."""
        if self._is_disabled:
            return LOCAL_OWNER
        if not authorization:
            raise CredentialsError(MISSING_CREDENTIALS)
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise CredentialsError(MISSING_CREDENTIALS)
        if credential.startswith(API_KEY_PREFIX):
            owner = await self._api_keys.owner_of(credential) if self._api_keys is not None else None
            if owner is None:
                raise CredentialsError(REFUSED_CREDENTIALS)
            return owner
        if self._supabase is None:
            raise CredentialsError(REFUSED_CREDENTIALS)
        return await self._supabase.owner_of(credential)
