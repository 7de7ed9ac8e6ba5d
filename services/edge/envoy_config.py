"""Envoy's configuration for the edge, rendered from EdgeConfig: one listener, three routes, no admin port.

Routes, in order: the gateway's gRPC service (gRPC-Web translated to gRPC over HTTP/2, CORS for the allowed
origins, no route timeout so that a meditation stream lasts as long as its job), media's signed asset links
under `/media/` (passed on unchanged), and everything else to the page server.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from services.edge.config import EdgeConfig

GATEWAY_PATH_PREFIX: Final = "/stillpoint.gateway.v1.GatewayService/"
MEDIA_PATH_PREFIX: Final = "/media/"
# What a gRPC-Web client sends besides the body; `authorization` carries the caller's API key.
_ALLOWED_REQUEST_HEADERS: Final = (
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
)
# A failed call's status may arrive as headers (trailers-only): a cross-origin page must be able to read them.
_EXPOSED_RESPONSE_HEADERS: Final = ("grpc-status", "grpc-message", "grpc-status-details-bin")
# Headers a caller could set to pose as someone or somewhere; the services never read them, and the edge
# passes none of them on.
_UNTRUSTED_REQUEST_HEADERS: Final = (
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-real-ip",
    "forwarded",
    "x-client-cert",
    "x-forwarded-client-cert",
)
_TYPE: Final = "type.googleapis.com/envoy.extensions"
_PREVIOUS_HOSTS: Final = f"{_TYPE}.retry.host.previous_hosts.v3.PreviousHostsPredicate"


def render_envoy_config(config: EdgeConfig, *, page_port: int) -> dict[str, Any]:
    """Envoy's bootstrap (v3) as a JSON-ready dict; the page server listens on 127.0.0.1:`page_port`."""
    idle = _duration(config.stream_idle_timeout_seconds)
    cors_policy = {
        "@type": f"{_TYPE}.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": origin} for origin in config.allowed_origins],
        "allow_methods": "POST, OPTIONS",
        "allow_headers": ",".join(_ALLOWED_REQUEST_HEADERS),
        "expose_headers": ",".join(_EXPOSED_RESPONSE_HEADERS),
        "max_age": "600",
    }
    routes = [
        {
            "match": {"prefix": GATEWAY_PATH_PREFIX},
            # timeout 0s: a server stream lasts as long as its job; idle_timeout still ends a dead one.
            "route": {"cluster": "gateway", "timeout": "0s", "idle_timeout": idle},
            "typed_per_filter_config": {"envoy.filters.http.cors": cors_policy},
        },
        {
            "match": {"prefix": MEDIA_PATH_PREFIX},
            "route": {
                "cluster": "media",
                # A whole video may take a while on a slow connection: bounded by idleness, not length.
                "timeout": "0s",
                "idle_timeout": "60s",
                # Any media replica serves any link, and a GET is safe to repeat: a replica that is down
                # (stopped, restarting) costs a retry on another one, not an error in the person's player.
                "retry_policy": {
                    "retry_on": "connect-failure,refused-stream,reset",
                    "num_retries": 2,
                    "retry_host_predicate": [
                        {
                            "name": "envoy.retry_host_predicates.previous_hosts",
                            "typed_config": {"@type": _PREVIOUS_HOSTS},
                        }
                    ],
                    "host_selection_retry_max_attempts": "5",
                },
            },
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "page", "timeout": "15s"}},
    ]
    connection_manager: dict[str, Any] = {
        "@type": f"{_TYPE}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "server_name": "stillpoint-edge",
        "stream_idle_timeout": idle,
        # The peer's own address is the only client address; a caller's X-Forwarded-For is not trusted.
        "use_remote_address": True,
        "xff_num_trusted_hops": 0,
        "skip_xff_append": True,
        "route_config": {
            "name": "edge",
            "request_headers_to_remove": list(_UNTRUSTED_REQUEST_HEADERS),
            "virtual_hosts": [{"name": "stillpoint", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {"@type": f"{_TYPE}.filters.http.grpc_web.v3.GrpcWeb"},
            },
            {
                "name": "envoy.filters.http.cors",
                "typed_config": {"@type": f"{_TYPE}.filters.http.cors.v3.Cors"},
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{_TYPE}.filters.http.router.v3.Router"},
            },
        ],
    }
    filter_chain: dict[str, Any] = {
        "filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": connection_manager}
        ]
    }
    if config.tls is not None:
        filter_chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": f"{_TYPE}.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": str(config.tls.certificate_file)},
                            "private_key": {"filename": str(config.tls.key_file)},
                        }
                    ],
                },
            },
        }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": _socket_address(config.bind_host, config.port),
                    "filter_chains": [filter_chain],
                }
            ],
            "clusters": [
                _cluster("gateway", [config.gateway_address], http2=True),
                _cluster("media", config.media_http_addresses, http2=False, eject_failing_hosts=True),
                _cluster("page", [f"127.0.0.1:{page_port}"], http2=False),
            ],
        }
    }


def write_envoy_config(config: EdgeConfig, path: Path, *, page_port: int) -> Path:
    """Writes the rendered configuration as JSON (which Envoy reads by its `.json` suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(render_envoy_config(config, page_port=page_port), indent=2) + "\n")
    return path


def validate_envoy_config(envoy: Path, path: Path, *, timeout_seconds: float = 60.0) -> str | None:
    """Runs `envoy --mode validate`; returns None when Envoy accepts the file, else its complaint."""
    checked = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
        check=False,
    )
    if checked.returncode == 0:
        return None
    return (checked.stderr.strip() or checked.stdout.strip() or f"exit status {checked.returncode}")[-2000:]


def _cluster(
    name: str, addresses: Sequence[str], *, http2: bool, eject_failing_hosts: bool = False
) -> dict[str, Any]:
    """A round-robin cluster over `addresses` (host:port each)."""
    hosts = [address.rpartition(":") for address in addresses]
    cluster: dict[str, Any] = {
        "name": name,
        # IP addresses need no resolver; a name (as in docker-compose, where media-pool names every media
        # replica) is resolved and re-resolved, and each address it resolves to becomes an endpoint.
        "type": "STATIC" if all(_is_ip(host) for host, _, _ in hosts) else "STRICT_DNS",
        "connect_timeout": "2s",
        "dns_lookup_family": "V4_PREFERRED",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket_address(host, int(port))}} for host, _, port in hosts
                    ]
                }
            ],
        },
    }
    if eject_failing_hosts:
        # A replica that keeps refusing connections is left out for a while, so that not every request
        # pays a retry while it is down; it is tried again after the ejection time.
        cluster["outlier_detection"] = {
            "consecutive_local_origin_failure": 2,
            "split_external_local_origin_errors": True,
            "base_ejection_time": "5s",
            "max_ejection_percent": 100,
        }
        # An ejection outlives the replica's outage: one restarted may still be left out when another
        # stops (a rolling restart), and with only the stopped one to choose, a request fails although a
        # healthy replica is there. So once half the replicas or more are out, the ejections are set aside
        # (Envoy's panic mode) and the retry finds the replica that is up.
        cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": 51.0}}
    if http2:
        # gRPC needs HTTP/2 to the upstream whatever the browser spoke.
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_TYPE}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host.strip("[]"), "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"
