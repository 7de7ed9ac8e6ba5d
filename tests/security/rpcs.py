"""Every public RPC, enumerated from the service descriptor, callable with any request and credentials."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb

GATEWAY = gateway_pb.DESCRIPTOR.services_by_name["GatewayService"]
# A new RPC is in this list the moment it is in the proto: no test can forget it.
METHODS: list[MethodDescriptor] = list(GATEWAY.methods)


def request_of(method: MethodDescriptor, **fields: Any) -> Any:
    """A request message of the method's type."""
    return message_factory.GetMessageClass(method.input_type)(**fields)


def _callable(channel: grpc.aio.Channel, method: MethodDescriptor, request_type: Any) -> Any:
    """The channel's multi-callable for the method, by its shape."""
    path = f"/{GATEWAY.full_name}/{method.name}"
    response_type = message_factory.GetMessageClass(method.output_type)
    make = channel.unary_stream if method.server_streaming else channel.unary_unary
    return make(
        path,
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )


async def call_for_details(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    request: Any,
    metadata: tuple[tuple[str, str], ...] = (),
    *,
    max_responses: int | None = None,
) -> tuple[grpc.StatusCode, str]:
    """The status and message a call ends with (OK when it answered); a stream is read to its end, or for
    `max_responses`."""
    multicallable = _callable(channel, method, type(request))
    try:
        if method.server_streaming:
            stream = multicallable(request, metadata=metadata, timeout=20)
            read = 0
            async for _ in stream:
                read += 1
                if max_responses is not None and read >= max_responses:
                    stream.cancel()
                    break
        else:
            await multicallable(request, metadata=metadata, timeout=20)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def call(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    request: Any,
    metadata: tuple[tuple[str, str], ...] = (),
    *,
    max_responses: int = 1,
) -> grpc.StatusCode:
    """Calls the method and returns its status (OK when it answered); a stream is read for `max_responses`."""
    code, _ = await call_for_details(channel, method, request, metadata, max_responses=max_responses)
    return code
