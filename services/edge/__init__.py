"""The browser edge: Envoy (gRPC-Web, CORS, TLS, routing) before the gateway and media, and the page."""
