"""Wrapping a gRPC method handler's behaviour while keeping its shape: what a server interceptor does to run
code inside the call (where the servicer context is), as the peer check and the tracing interceptor do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behaviour = Callable[..., Any]

_SHAPES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def with_behaviour(
    handler: grpc.RpcMethodHandler[Any, Any], wrap: Callable[[Behaviour], Behaviour]
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of `handler`'s shape and (de)serializers whose behaviour is `wrap(behaviour)`."""
    for shape, make in _SHAPES.items():
        behaviour = getattr(handler, shape)
        if behaviour is not None:
            wrapped: grpc.RpcMethodHandler[Any, Any] = make(
                wrap(behaviour),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            return wrapped
    raise AssertionError("a handler of no known shape")
