"""Runs the three services as local processes, for `make demo` and the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.certificates import InternalCertificates, make_internal_certificates
from services.cli import gateway_channel
from services.environment import Environment
from services.serving import internal_channel_credentials
from services.tls import InternalTls

# Whose conversations a stack's own key reaches (the demo's and the tests').
STACK_OWNER = "local"

SERVICES = ("content", "media", "gateway")
# The process key of the browser edge (Envoy and the page), started only when asked for: not a gRPC service.
EDGE = "edge"
# The key under which `ports` may fix media's HTTP endpoint (the one the edge routes /media/ to); a further
# replica's is `media-http-2`, `media-http-3` ...
MEDIA_HTTP = "media-http"


def metrics_key(replica_key_: str) -> str:
    """The `ports` key of a process's /metrics port: `gateway` -> `gateway-metrics`."""
    return f"{replica_key_}-metrics"


def metrics_ports_from(environment: Mapping[str, str]) -> dict[str, int]:
    """For `make demo` and `make run`: with STILLPOINT_METRICS_PORT=P set, the gateway serves /metrics on P,
    content on P + 1 and media on P + 2 (as `ports` keys); empty when it is unset or 0."""
    base = Environment(environment).integer("STILLPOINT_METRICS_PORT", 0, minimum=0, maximum=65_533)
    return (
        {
            metrics_key(service): base + offset
            for offset, service in enumerate(("gateway", "content", "media"))
        }
        if base
        else {}
    )


def media_http_key(replica_key_: str) -> str:
    """The `ports` key of a media replica's HTTP endpoint: `media` -> `media-http`, `media-2` ->
    `media-http-2`."""
    return MEDIA_HTTP + replica_key_.removeprefix("media")


def replica_key(service: str, replica: int) -> str:
    """The process key of a service's replica: `media` for the first, then `media-2`, `media-3` ..."""
    return service if replica == 1 else f"{service}-{replica}"


def service_of(key: str) -> str:
    """The service a process key belongs to: `media-2` is a media replica."""
    service = key.rsplit("-", 1)[0] if key.rsplit("-", 1)[-1].isdigit() else key
    if service not in SERVICES:
        raise KeyError(f"{key!r} is not a process of the stack: use one of {', '.join(SERVICES)}[-N]")
    return service


@dataclass
class Stack:
    """Addresses and processes of a running stack. The `*_address` fields are each service's first replica;
    `addresses` has every process, keyed like `processes` ("media", "media-2", ...)."""

    gateway_address: str
    content_address: str
    media_address: str
    var_root: Path
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    # An API key made for this stack's run (owner STACK_OWNER), as `stillpoint keys create` makes one.
    api_key: str = ""
    # The throw-away internal CA and certificates the services talk mutual TLS with.
    certificates: InternalCertificates | None = None
    # The browser's one origin (`http://127.0.0.1:PORT`: the page, gRPC-Web, /media/) when the edge runs.
    edge_url: str = ""
    # Per process key, what it is started with besides the stack's environment (a media replica's own HTTP
    # port when the edge runs).
    own_environment: dict[str, dict[str, str]] = field(default_factory=dict)
    # Per process key, the URL of its /metrics when the stack runs with metrics.
    metrics_urls: dict[str, str] = field(default_factory=dict)

    def client_environment(self) -> dict[str, str]:
        """The environment the `stillpoint` command needs to reach this stack: its API key, and the
        certificate for the commands that talk to content directly (see `operator_certificate`)."""
        return {**os.environ, "STILLPOINT_API_KEY": self.api_key, **self.operator_certificate()}

    def operator_certificate(self) -> dict[str, str]:
        """The STILLPOINT_INTERNAL_* variables that operators' tools (`stillpoint stats`, `pregenerate`,
        grpcurl) use to call content or media directly: the gateway's certificate, the one caller the
        internal services answer by default. Empty without certificates (a plaintext stack)."""
        if self.certificates is None:
            return {}
        gateway = self.certificates.issued["gateway"]
        return {
            "STILLPOINT_INTERNAL_CA_FILE": str(self.certificates.ca_file),
            "STILLPOINT_INTERNAL_CERT_FILE": str(gateway.certificate_file),
            "STILLPOINT_INTERNAL_KEY_FILE": str(gateway.key_file),
        }

    def internal_channel(self, replica: str) -> grpc.aio.Channel:
        """A channel to a content or media replica, presenting the gateway's certificate (mutual TLS)."""
        return internal_channel(self.addresses[replica], service_of(replica), self.certificates)

    def gateway_channel(self, replica: str = "gateway") -> grpc.aio.Channel:
        """A channel to a gateway replica (the first by default) whose every call carries the stack's key."""
        return gateway_channel(self.addresses[replica], self.api_key)

    def replicas(self, service: str) -> list[str]:
        """The process keys of one service's replicas, first replica first."""
        return [key for key in self.addresses if service_of(key) == service]

    def stop(self, key: str, signum: int = signal.SIGTERM, timeout_seconds: float = 30.0) -> int:
        """Stops one process (SIGTERM: gracefully; SIGKILL: a crash) and returns its exit status."""
        process = self.processes[key]
        process.send_signal(signum)
        return process.wait(timeout=timeout_seconds)

    def start(self, key: str, startup_timeout_seconds: float = 60.0) -> None:
        """Starts one process again, on its own port with the stack's environment, and waits until it is
        SERVING."""
        self.processes[key] = _spawn(
            key,
            _port_of(self.addresses[key]),
            {**self.environment, **self.own_environment.get(key, {})},
            self.log_dir,
        )
        _wait_for(
            key,
            self.processes[key],
            self.addresses[key],
            self.log_dir,
            startup_timeout_seconds,
            self.certificates,
        )


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def internal_channel(
    address: str, service: str, certificates: InternalCertificates | None
) -> grpc.aio.Channel:
    """An asyncio channel to an internal service with the gateway's certificate (plaintext without any)."""
    if certificates is None:
        return grpc.aio.insecure_channel(address)
    credentials, options = _gateway_credentials(service, certificates)
    return grpc.aio.secure_channel(address, credentials, options=options)


def _gateway_credentials(
    service: str, certificates: InternalCertificates
) -> tuple[grpc.ChannelCredentials, list[tuple[str, str]]]:
    gateway = certificates.issued["gateway"]
    tls = InternalTls(certificates.ca_file, gateway.certificate_file, gateway.key_file)
    return internal_channel_credentials(tls), [("grpc.ssl_target_name_override", service)]


def wait_until_serving(
    address: str,
    timeout_seconds: float,
    *,
    service: str = "",
    certificates: InternalCertificates | None = None,
) -> None:
    """Polls grpc.health.v1 until the server reports SERVING (over mutual TLS for an internal `service`
    when `certificates` are given)."""
    deadline = time.monotonic() + timeout_seconds
    last_error = "no answer"
    if certificates is not None and service in ("content", "media"):
        credentials, options = _gateway_credentials(service, certificates)
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.RpcError as error:
                last_error = error.code().name
            time.sleep(0.1)
    raise TimeoutError(f"{address} did not report SERVING within {timeout_seconds:g} s ({last_error})")


def target_of(addresses: list[str]) -> str:
    """A gRPC target naming every replica: `127.0.0.1:P` for one, `ipv4:127.0.0.1:P1,127.0.0.1:P2` for
    several, so the gateway's round-robin channel spreads calls over all of them."""
    return addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)


@contextmanager
def running_stack(
    var_root: Path,
    *,
    replicas: Mapping[str, int] | None = None,
    ports: Mapping[str, int] | None = None,
    extra_environment: Mapping[str, str] | None = None,
    startup_timeout_seconds: float = 60.0,
    edge: bool = False,
    metrics: bool = False,
) -> Iterator[Stack]:
    """Starts content, media and gateway (`replicas` of each, one by default), waits for health, yields their
    addresses, then SIGTERMs them. `ports` fixes a process's port by its key ("media", "media-2"); the others
    get free ones. Replicas share the environment (and so the database and storage) but not their port.
    With `edge`, the browser edge runs too (key "edge", its port fixable in `ports`, as is each media
    replica's HTTP port under "media-http", "media-http-2" ...): media mints its links under
    `{stack.edge_url}/media`, and the edge spreads them over every media replica. With `metrics`, every
    process serves /metrics on loopback on a port of its own (fixable in `ports` under "gateway-metrics",
    "media-2-metrics" ...), listed in `stack.metrics_urls`."""
    counts = {service: (replicas or {}).get(service, 1) for service in SERVICES}
    unknown = set(replicas or {}) - set(SERVICES)
    if unknown or any(count < 1 for count in counts.values()):
        raise ValueError(f"replicas must map {', '.join(SERVICES)} to 1 or more, not {dict(replicas or {})}")
    keys = [replica_key(service, n) for service in SERVICES for n in range(1, counts[service] + 1)]
    fixed = dict(ports or {})
    chosen: dict[str, int] = {}
    media_keys = [key for key in keys if service_of(key) == "media"]
    edge_keys = [EDGE, *(media_http_key(key) for key in media_keys)] if edge else []
    metrics_keys = [metrics_key(key) for key in keys] if metrics else []
    for key in [*keys, *edge_keys, *metrics_keys]:
        port = fixed.get(key) or free_port()
        # Two probes can land on the same free port, or on one fixed for another process.
        while key not in fixed and (port in chosen.values() or port in fixed.values()):
            port = free_port()
        chosen[key] = port
    addresses = {key: f"127.0.0.1:{port}" for key, port in chosen.items() if key in keys}
    log_dir = var_root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    def first_port(service: str) -> str:
        return str(_port_of(addresses[service]))

    def target(service: str) -> str:
        return target_of([addresses[key] for key in keys if service_of(key) == service])

    environment = {
        **os.environ,
        "STILLPOINT_VAR_DIR": str(var_root),
        # Each replica overrides its own service's port when it is spawned.
        "STILLPOINT_CONTENT_PORT": first_port("content"),
        "STILLPOINT_MEDIA_PORT": first_port("media"),
        "STILLPOINT_GATEWAY_PORT": first_port("gateway"),
        "STILLPOINT_CONTENT_ADDRESS": target("content"),
        "STILLPOINT_MEDIA_ADDRESS": target("media"),
        **(
            _edge_environment(
                chosen[EDGE], [chosen[media_http_key(key)] for key in media_keys], addresses["gateway"]
            )
            if edge
            else {}
        ),
        **(extra_environment or {}),
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    stack = Stack(
        gateway_address=addresses["gateway"],
        content_address=addresses["content"],
        media_address=addresses["media"],
        var_root=var_root,
        log_dir=log_dir,
        processes=processes,
        environment=environment,
        addresses=addresses,
        edge_url=f"http://127.0.0.1:{chosen[EDGE]}" if edge else "",
        own_environment={
            key: {
                **(
                    {"STILLPOINT_MEDIA_HTTP_PORT": str(chosen[media_http_key(key)])}
                    if edge and key in media_keys
                    else {}
                ),
                # The processes share one environment: each gets its own metrics port here.
                **(
                    {
                        "STILLPOINT_METRICS_PORT": str(chosen[metrics_key(key)]),
                        "STILLPOINT_METRICS_BIND_HOST": "127.0.0.1",
                    }
                    if metrics
                    else {}
                ),
            }
            for key in keys
        },
        metrics_urls={
            key: f"http://127.0.0.1:{chosen[metrics_key(key)]}/metrics" for key in (keys if metrics else [])
        },
    )
    # The content service and the gateway refuse an unmigrated database, as in production: migrate first
    # (once: replicas share the database).
    migrate(environment)
    stack.api_key = create_api_key(environment, STACK_OWNER)
    # The services talk mutual TLS with a CA made for this run: the internal ports refuse strangers.
    stack.certificates = certificates = make_internal_certificates(var_root / "certs")
    environment["STILLPOINT_INTERNAL_CA_FILE"] = str(certificates.ca_file)
    try:
        for key in keys:
            processes[key] = _spawn(
                key, _port_of(addresses[key]), {**environment, **stack.own_environment.get(key, {})}, log_dir
            )
        for key in keys:
            _wait_for(key, processes[key], addresses[key], log_dir, startup_timeout_seconds, certificates)
        if edge:
            processes[EDGE] = _spawn_edge(environment, log_dir)
            _wait_for_edge(processes[EDGE], stack.edge_url, log_dir, startup_timeout_seconds)
        yield stack
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _edge_environment(edge_port: int, media_http_ports: list[int], gateway_address: str) -> dict[str, str]:
    """What the edge and media need to know of each other: each media replica serves links on its own HTTP
    port (the first's is the stack's default; the others' are set per replica) and mints them under the
    edge's origin; the edge routes the gateway's RPCs, and /media/ to every media replica."""
    return {
        "STILLPOINT_MEDIA_HTTP_PORT": str(media_http_ports[0]),
        "STILLPOINT_PUBLIC_MEDIA_URL": f"http://127.0.0.1:{edge_port}/media",
        "STILLPOINT_EDGE_PORT": str(edge_port),
        "STILLPOINT_EDGE_GATEWAY_ADDRESS": gateway_address,
        "STILLPOINT_EDGE_MEDIA_ADDRESS": ",".join(f"127.0.0.1:{port}" for port in media_http_ports),
    }


def _spawn_edge(environment: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    with open(log_dir / f"{EDGE}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.edge"], env=environment, stdout=log, stderr=log
        )


def _wait_for_edge(
    process: subprocess.Popen[bytes], edge_url: str, log_dir: Path, timeout_seconds: float
) -> None:
    """Polls the edge's /healthz (answered through Envoy by the page server) until it says ok."""
    deadline = time.monotonic() + timeout_seconds
    last_error = "no answer"
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{edge_url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as error:
            last_error = str(error)
        time.sleep(0.1)
    code = process.poll()
    status = "is still starting" if code is None else f"exited with {code}"
    log_tail = (log_dir / f"{EDGE}.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(
        f"{EDGE} {status}: {edge_url} did not answer ({last_error})\n--- {EDGE}.log ---\n{log_tail}"
    )


def migrate(environment: Mapping[str, str]) -> None:
    """Runs the migration of each service that owns tables, as `make migrate` does; raises RuntimeError with
    its output when one fails."""
    for owner in ("content", "gateway"):
        migrated = subprocess.run(
            [sys.executable, "-m", f"services.{owner}.migrate"],
            env=dict(environment),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if migrated.returncode != 0:
            output = migrated.stderr.strip() or migrated.stdout.strip()
            raise RuntimeError(f"{owner} migration failed: {output}")


def create_api_key(environment: Mapping[str, str], owner: str) -> str:
    """Makes an API key for `owner` in the gateway's database with `stillpoint keys create`; returns it."""
    made = subprocess.run(
        [sys.executable, "-m", "services.cli", "keys", "create", "--owner", owner],
        env=dict(environment),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if made.returncode != 0 or not made.stdout.strip():
        raise RuntimeError(f"could not make an API key: {made.stderr.strip()}")
    return made.stdout.strip()


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _spawn(key: str, port: int, environment: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    service = service_of(key)
    with open(log_dir / f"{key}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            env={
                **environment,
                f"STILLPOINT_{service.upper()}_PORT": str(port),
                **_certificate_of(service, environment),
            },
            stdout=log,
            stderr=log,
        )


def _certificate_of(service: str, environment: Mapping[str, str]) -> dict[str, str]:
    """The process's own internal certificate and key, next to the stack's CA (none without a CA)."""
    ca_file = environment.get("STILLPOINT_INTERNAL_CA_FILE")
    if not ca_file:
        return {}
    folder = Path(ca_file).parent
    return {
        "STILLPOINT_INTERNAL_CERT_FILE": str(folder / f"{service}.pem"),
        "STILLPOINT_INTERNAL_KEY_FILE": str(folder / f"{service}-key.pem"),
    }


def _wait_for(
    key: str,
    process: subprocess.Popen[bytes],
    address: str,
    log_dir: Path,
    timeout_seconds: float,
    certificates: InternalCertificates | None = None,
) -> None:
    try:
        wait_until_serving(address, timeout_seconds, service=service_of(key), certificates=certificates)
    except TimeoutError as error:
        code = process.poll()
        status = "is still starting" if code is None else f"exited with {code}"
        log_tail = (log_dir / f"{key}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{key} {status}: {error}\n--- {key}.log ---\n{log_tail}") from None
