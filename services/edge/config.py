"""The edge's configuration, read once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.environment import ConfigError, Environment
from services.log_context import LOG_FORMATS

DEFAULT_PORT = 8080
DEFAULT_GATEWAY_ADDRESS = "127.0.0.1:50051"
# The media service's HTTP endpoint (signed asset links under /media/), beside its gRPC port 50053.
DEFAULT_MEDIA_HTTP_ADDRESS = "127.0.0.1:50054"
# The most media endpoints the edge takes by address; more replicas belong behind one DNS name.
MAX_MEDIA_HTTP_ADDRESSES = 16
# A meditation stream is quiet while a stage runs; the slowest stage may take 300 s (the transcript's and
# the image's budgets) before its next event, so a stream idle for longer than this is dead.
DEFAULT_STREAM_IDLE_TIMEOUT_SECONDS = 900.0
# The built page (`make web`), relative to the repository.
DEFAULT_PAGE_DIR = Path(__file__).resolve().parents[2] / "web" / "dist"


@dataclass(frozen=True)
class EdgeTls:
    """The certificate chain and key with which the edge terminates TLS."""

    certificate_file: Path
    key_file: Path


@dataclass(frozen=True)
class EdgeConfig:
    """Everything the edge needs to start."""

    port: int
    bind_host: str
    # host:port of the gateway's plaintext gRPC port, and of every media replica's HTTP endpoint: any
    # replica serves any link (they share the storage and the link secret), so the edge spreads over them.
    # A DNS name (docker-compose's media-pool) stands for every address it resolves to.
    gateway_address: str
    media_http_addresses: tuple[str, ...]
    page_dir: Path
    # Origins (scheme://host[:port]) a page may call the gateway from; the edge's own by default.
    allowed_origins: tuple[str, ...]
    tls: EdgeTls | None
    stream_idle_timeout_seconds: float
    # Envoy worker threads.
    workers: int
    log_level: str
    # STILLPOINT_LOG_FORMAT: text or json (services.serving.LOG_FORMATS).
    log_format: str

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @classmethod
    def from_environment(cls, environment: Environment) -> EdgeConfig:
        port = environment.port("STILLPOINT_EDGE_PORT", DEFAULT_PORT)
        if port == 0:
            raise ConfigError("STILLPOINT_EDGE_PORT must name a port: browsers need a fixed origin")
        bind_host = environment.bind_host("STILLPOINT_EDGE_BIND_HOST", "127.0.0.1")
        tls = _read_tls(environment)
        scheme = "https" if tls is not None else "http"
        own_origins = (f"{scheme}://127.0.0.1:{port}", f"{scheme}://localhost:{port}")
        origins = tuple(
            origin.strip().rstrip("/")
            for origin in environment.text("STILLPOINT_EDGE_ALLOWED_ORIGINS", "").split(",")
            if origin.strip()
        )
        for origin in origins:
            if not origin.startswith(("http://", "https://")) or "*" in origin:
                raise ConfigError(
                    f"STILLPOINT_EDGE_ALLOWED_ORIGINS: {origin!r} is not an origin such as "
                    "https://meditate.example.com (no wildcards)"
                )
        return cls(
            port=port,
            bind_host=bind_host,
            gateway_address=_host_port(
                environment, "STILLPOINT_EDGE_GATEWAY_ADDRESS", DEFAULT_GATEWAY_ADDRESS
            ),
            media_http_addresses=_host_ports(
                environment, "STILLPOINT_EDGE_MEDIA_ADDRESS", DEFAULT_MEDIA_HTTP_ADDRESS
            ),
            page_dir=Path(environment.text("STILLPOINT_EDGE_PAGE_DIR", str(DEFAULT_PAGE_DIR))).resolve(),
            allowed_origins=origins or own_origins,
            tls=tls,
            stream_idle_timeout_seconds=environment.seconds(
                "STILLPOINT_EDGE_STREAM_IDLE_TIMEOUT_SECONDS", DEFAULT_STREAM_IDLE_TIMEOUT_SECONDS
            ),
            workers=environment.integer("STILLPOINT_EDGE_WORKERS", 2, minimum=1, maximum=64),
            log_level=environment.choice(
                "STILLPOINT_LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")
            ),
            log_format=environment.choice("STILLPOINT_LOG_FORMAT", "text", LOG_FORMATS),
        )


def _host_port(environment: Environment, name: str, default: str) -> str:
    """A plain `host:port` (Envoy's clusters take one address, not a gRPC target list)."""
    value = environment.address(name, default)
    if value.startswith(("dns:", "ipv4:", "ipv6:")):
        raise ConfigError(f"{name}={value!r} must be host:port, such as {default}")
    return value


def _host_ports(environment: Environment, name: str, default: str) -> tuple[str, ...]:
    """A comma-separated list of plain `host:port`s: the endpoints of one Envoy cluster."""
    entries = [entry.strip() for entry in environment.text(name, default).split(",")]
    if not all(entries) or len(entries) > MAX_MEDIA_HTTP_ADDRESSES:
        raise ConfigError(
            f"{name} must list 1 to {MAX_MEDIA_HTTP_ADDRESSES} host:port addresses separated by commas, "
            f"such as {default}"
        )
    addresses = tuple(_host_port(Environment({name: entry}), name, default) for entry in entries)
    if len(set(addresses)) != len(addresses):
        raise ConfigError(f"{name} names an address twice")
    return addresses


def _read_tls(environment: Environment) -> EdgeTls | None:
    certificate = environment.text("STILLPOINT_EDGE_TLS_CERT_FILE", "")
    key = environment.text("STILLPOINT_EDGE_TLS_KEY_FILE", "")
    if not certificate and not key:
        return None
    if not certificate or not key:
        raise ConfigError(
            "set both STILLPOINT_EDGE_TLS_CERT_FILE and STILLPOINT_EDGE_TLS_KEY_FILE, or neither"
        )
    for name, value in (
        ("STILLPOINT_EDGE_TLS_CERT_FILE", certificate),
        ("STILLPOINT_EDGE_TLS_KEY_FILE", key),
    ):
        if not Path(value).is_file():
            raise ConfigError(f"{name}={value!r} is not a readable file")
    return EdgeTls(Path(certificate).resolve(), Path(key).resolve())
