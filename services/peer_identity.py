"""Who may call an internal service: the names in the caller's client certificate, checked on every call.

Mutual TLS already refuses, during the handshake, a client without a certificate from the internal CA. That
CA signs every service's certificate, so the handshake alone would let media's certificate call content.
This check runs after it, inside each call, and lets through only the certificates that name an allowed
caller (by default the gateway's). Health checks stay open to every certificate the CA signed: each
container probes its own health with its own certificate.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import aclosing
from typing import Any

import grpc

from services.rpc_handlers import with_behaviour

logger = logging.getLogger(__name__)

# Load balancers, orchestrators and each container's own probe check health with any CA-signed certificate.
OPEN_METHOD_PREFIX = "/grpc.health.v1.Health/"
# The keys gRPC's TLS layer fills in the call's auth context from the verified client certificate.
_COMMON_NAME = "x509_common_name"
_SUBJECT_ALTERNATIVE_NAME = "x509_subject_alternative_name"

NO_CERTIFICATE = "this service needs a client certificate from the internal CA"
NOT_ALLOWED = (
    "the client certificate names no allowed caller of this service (its STILLPOINT_INTERNAL_ALLOWED_CALLERS)"
)

_Behaviour = Callable[..., Any]
_Check = Callable[[Any], Awaitable[None]]


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]) -> frozenset[str]:
    """Every name the peer's verified certificate gives it: its common name and each subjectAltName. Empty
    when the peer presented none (a plaintext or one-way TLS port)."""
    values = [*auth_context.get(_COMMON_NAME, ()), *auth_context.get(_SUBJECT_ALTERNATIVE_NAME, ())]
    return frozenset(value.decode(errors="replace") for value in values)


class PeerIdentityInterceptor(grpc.aio.ServerInterceptor):
    """Ends every call but health checks with PERMISSION_DENIED when the caller's certificate names none of
    `allowed_callers` (UNAUTHENTICATED when it presented no certificate), before its handler runs.

    Install it only on a port that requires client certificates (`serving.internal_server_credentials`):
    on a plaintext port no caller has a certificate, and every call would be refused."""

    def __init__(self, allowed_callers: Iterable[str]) -> None:
        self._allowed = frozenset(allowed_callers)
        if not self._allowed:
            raise ValueError("an internal service needs at least one allowed caller")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIX):
            return handler
        method = handler_call_details.method

        # An interceptor sees no servicer context, and the certificate lives in the context's auth context:
        # the check runs inside the call, first, through a handler wrapped around the real one.
        async def check(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            names = certificate_names(context.auth_context())
            if not names:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, NO_CERTIFICATE)
            if names.isdisjoint(self._allowed):
                logger.warning(
                    "refused %s from %s: its certificate names %s, not an allowed caller",
                    method,
                    context.peer(),
                    ", ".join(sorted(names)),
                )
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, NOT_ALLOWED)

        return with_behaviour(handler, lambda behaviour: _after(check, behaviour))


def _after(check: _Check, behaviour: _Behaviour) -> _Behaviour:
    """`behaviour` after `check`, in the same form: gRPC serves an async generator's responses as a stream,
    and awaits a coroutine (which returns the response, or writes a stream with `context.write`)."""
    if inspect.isasyncgenfunction(behaviour):

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            await check(context)
            # Closed with this generator: a cut stream's cleanup (`finally` in the servicer) runs now, not
            # whenever the garbage collector finds it.
            async with aclosing(behaviour(request, context)) as responses:
                async for response in responses:
                    yield response

        return streaming
    if not inspect.iscoroutinefunction(behaviour):
        raise TypeError(f"{behaviour!r} is not an async handler: the internal services serve only async ones")

    async def answering(request: Any, context: Any) -> Any:
        await check(context)
        return await behaviour(request, context)

    return answering
