// The gateway's client: gRPC-Web (binary) through the edge, on the page's own origin.
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { GatewayService } from "./gen/stillpoint/gateway/v1/gateway_service_pb";

export type Gateway = Client<typeof GatewayService>;

/** A client whose every call carries `authorization: Bearer <key>`, the key read when the call is made. */
export function gatewayClient(currentKey: () => string | null): Gateway {
  const authorize: Interceptor = (next) => async (request) => {
    const key = currentKey();
    if (key) request.header.set("authorization", `Bearer ${key}`);
    return next(request);
  };
  const transport = createGrpcWebTransport({
    baseUrl: window.location.origin,
    useBinaryFormat: true,
    interceptors: [authorize],
  });
  return createClient(GatewayService, transport);
}
