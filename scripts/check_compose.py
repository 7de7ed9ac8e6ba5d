"""Validates docker-compose.yml without a Docker engine: the Compose schema and the cross-references.

1. The file against the Compose Specification's JSON schema (check-jsonschema vendors it: works offline).
2. Cross-references the schema cannot see: every build's Dockerfile exists and has the stage its SERVICE
   argument or target names, every depends_on target is a defined service (a service_healthy one with a
   health check, no cycles), every named volume is declared, every ${VAR} has a default or is documented in
   README.md, and no key-like secret is written in the file.

Variables the stack's own services get that README.md does not document are warnings; --strict makes them
errors. Exits non-zero on failure. Run as `python -m scripts.check_compose` (scripts/check-compose.sh does).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

# A mapping as the YAML loader returns it: string keys (Compose's), values of any YAML type.
Node = Mapping[str, Any]

# Interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+x}, $VAR; $$ is
# a literal dollar sign.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
OPERATORS = (":-", ":?", ":+", "-", "?", "+")
DEFAULTING_OPERATORS = (":-", "-", ":+", "+")
# Never a key in the file: interpolate it from the environment instead.
SECRET = re.compile(r"\b(sk-(?:proj-)?[A-Za-z0-9_-]{16,}|eyJ[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]+)")
DOCUMENTED_NAME = re.compile(r"`([A-Z][A-Z0-9_]*)`")
STAGE = re.compile(r"^\s*FROM\s+\S+\s+AS\s+([A-Za-z0-9_.-]+)", re.MULTILINE | re.IGNORECASE)
HEALTHCHECK_INSTRUCTION = re.compile(r"^\s*HEALTHCHECK\s+CMD", re.MULTILINE)


class ComposeFileError(Exception):
    """The compose file cannot be read as a Compose document at all."""


@dataclass(frozen=True)
class Reference:
    """One interpolated variable: its name, the operator after it ('' for none), and where it appears."""

    name: str
    operator: str
    where: str


@dataclass
class Findings:
    """What the checks found: errors fail the check, warnings only report."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_compose(compose_path: Path) -> Node:
    """The compose document, with anchors and merge keys (<<) resolved as Compose resolves them."""
    try:
        document = YAML(typ="safe", pure=True).load(compose_path.read_text(encoding="utf-8"))
    except Exception as error:  # ruamel's YAMLError and DuplicateKeyError share no narrower public base
        raise ComposeFileError(f"{compose_path} is not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise ComposeFileError(f"{compose_path} is not a mapping")
    return document


def documented_variables(readme_path: Path) -> set[str]:
    """Every `UPPER_CASE` name README.md mentions in code spans."""
    readme = readme_path.read_text(encoding="utf-8") if readme_path.is_file() else ""
    return set(DOCUMENTED_NAME.findall(readme))


def _build_options(build: Any) -> Node:
    return {"context": build} if isinstance(build, str) else build


def check_builds(services: Node, base: Path, findings: Findings) -> None:
    """Every build context is a folder and every build's Dockerfile exists."""
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            continue
        options = _build_options(build)
        context = base / options.get("context", ".")
        if not context.is_dir():
            findings.errors.append(f"services.{name}.build.context: {context} is not a folder")
            continue
        if "dockerfile_inline" in options:
            continue
        dockerfile = context / options.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            findings.errors.append(
                f"services.{name}.build.dockerfile: {dockerfile.relative_to(base)} does not exist"
            )
            continue
        # The root Dockerfile's last stage is `FROM ${SERVICE}`: a SERVICE (or target) naming no stage
        # fails only when the image is built.
        stages = set(STAGE.findall(dockerfile.read_text(encoding="utf-8")))
        args = options.get("args") or {}
        for what, stage in (("args.SERVICE", args.get("SERVICE")), ("target", options.get("target"))):
            if stage is not None and str(stage) not in stages:
                findings.errors.append(
                    f"services.{name}.build.{what}: {dockerfile.name} has no stage named {stage!r}"
                )


def has_healthcheck(service: Node, base: Path) -> bool:
    """Whether the service has a health check, its own or its Dockerfile's, that is not disabled."""
    healthcheck = service.get("healthcheck")
    if isinstance(healthcheck, dict):
        test = healthcheck.get("test")
        if healthcheck.get("disable") in (True, "true") or test in (["NONE"], "NONE"):
            return False
        if test:
            return True
    build = service.get("build")
    if build is not None:
        options = _build_options(build)
        dockerfile = base / options.get("context", ".") / options.get("dockerfile", "Dockerfile")
        if dockerfile.is_file() and HEALTHCHECK_INSTRUCTION.search(dockerfile.read_text(encoding="utf-8")):
            return True
    return False


def dependency_graph(services: Node, base: Path, findings: Findings) -> dict[str, list[str]]:
    """Each service's depends_on targets; checks that they exist and that their conditions can be met."""
    graph: dict[str, list[str]] = {}
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        targets: Node = {target: {} for target in depends_on} if isinstance(depends_on, list) else depends_on
        graph[name] = list(targets)
        for target, options in targets.items():
            if target not in services:
                findings.errors.append(
                    f"services.{name}.depends_on: {target!r} is not a service of this file"
                )
                continue
            condition = (options or {}).get("condition", "service_started")
            if condition == "service_healthy" and not has_healthcheck(services[target], base):
                findings.errors.append(
                    f"services.{name}.depends_on.{target}: service_healthy, but {target} has no health check"
                )
            if condition == "service_completed_successfully" and services[target].get("restart") not in (
                None,
                "no",
            ):
                findings.errors.append(
                    f"services.{name}.depends_on.{target}: service_completed_successfully,"
                    f" but {target} restarts"
                )
    return graph


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One dependency cycle, first node repeated at the end, or None when the graph has none."""
    on_path: set[str] = set()
    finished: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        on_path.add(node)
        path.append(node)
        for target in graph.get(node, []):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target in graph and target not in finished and (cycle := visit(target)):
                return cycle
        on_path.discard(node)
        finished.add(node)
        path.pop()
        return None

    for node in graph:
        if node not in finished and (cycle := visit(node)):
            return cycle
    return None


def check_volumes(document: Node, services: Node, findings: Findings) -> None:
    """Every named volume a service mounts is declared at the top level."""
    declared_volumes = set(document.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source: str | None
            if isinstance(volume, dict):
                source = volume.get("source") if volume.get("type", "volume") == "volume" else None
            else:
                source = str(volume).split(":", 1)[0] if ":" in str(volume) else None
            if source and not source.startswith((".", "/", "~", "$")) and source not in declared_volumes:
                findings.errors.append(
                    f"services.{name}.volumes: named volume {source!r} is not declared under `volumes:`"
                )


def scan(text: str, where: str, found: list[Reference], findings: Findings) -> None:
    """Appends the variables interpolated in one string value; malformed interpolations are errors."""
    index = 0
    while (index := text.find("$", index)) != -1:
        following = text[index + 1 : index + 2]
        if following == "$":
            index += 2
            continue
        if following == "{":
            depth, end = 1, index + 2
            while end < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                end += 1
            if depth:
                findings.errors.append(f"{where}: unterminated ${{ in {text!r}")
                return
            body = text[index + 2 : end - 1]
            match = NAME.match(body)
            if not match:
                findings.errors.append(
                    f"{where}: malformed interpolation ${{{body}}} (use $$ for a literal $)"
                )
            else:
                rest = body[match.end() :]
                operator = next((op for op in OPERATORS if rest.startswith(op)), "")
                if rest and not operator:
                    findings.errors.append(f"{where}: malformed interpolation ${{{body}}}")
                found.append(Reference(match.group(), operator, where))
                scan(rest[len(operator) :], where, found, findings)
            index = end
            continue
        match = NAME.match(text, index + 1)
        if match:
            found.append(Reference(match.group(), "", where))
            index = match.end()
        else:
            findings.errors.append(f"{where}: a lone $ in {text!r} (use $$ for a literal $)")
            index += 1


def walk(node: object, where: str, found: list[Reference], findings: Findings) -> None:
    """Scans every string under node; where is its dotted path in the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            walk(value, f"{where}.{key}" if where else str(key), found, findings)
    elif isinstance(node, list):
        for position, value in enumerate(node):
            walk(value, f"{where}[{position}]", found, findings)
    elif isinstance(node, str):
        scan(node, where, found, findings)


def check_interpolations(document: Node, documented: set[str], findings: Findings) -> list[Reference]:
    """Every interpolated variable has a default or is documented in README.md; returns them all."""
    references: list[Reference] = []
    # Extension fields (x-...) are reached through their aliases where they are used.
    walk(
        {key: value for key, value in document.items() if not str(key).startswith("x-")},
        "",
        references,
        findings,
    )
    # One message per variable: an anchor's values appear in every service that merges it.
    missing: dict[tuple[str, str], list[str]] = {}
    for reference in references:
        has_default = reference.operator in DEFAULTING_OPERATORS
        if not has_default and reference.name not in documented:
            needs = "is required" if "?" in reference.operator else "has no default"
            missing.setdefault((reference.name, needs), []).append(reference.where)
    for (variable, needs), places in missing.items():
        findings.errors.append(
            f"${{{variable}}} {needs} and is not documented in README.md (at {', '.join(places)})"
        )
    return references


def check_secrets(compose_path: Path, findings: Findings) -> None:
    """No line of the file looks like an API key or a JWT."""
    for number, line in enumerate(compose_path.read_text(encoding="utf-8").splitlines(), start=1):
        if SECRET.search(line):
            findings.errors.append(
                f"{compose_path}:{number}: looks like an API key or JWT; pass it through ${{VAR:-}} instead"
            )


def check_environment_documented(
    services: Node, documented: set[str], findings: Findings, *, is_strict: bool
) -> None:
    """The stack's own services (built here) get only variables the README documents."""
    undocumented: dict[str, set[str]] = {}
    for name, service in services.items():
        if "build" not in service:
            continue
        environment = service.get("environment") or {}
        keys = (
            [item.split("=", 1)[0] for item in environment] if isinstance(environment, list) else environment
        )
        for key in keys:
            if key not in documented:
                undocumented.setdefault(key, set()).add(name)
    for key, names in sorted(undocumented.items()):
        message = (
            f"{key} (set for {', '.join(sorted(names))})"
            " is not documented in README.md's configuration tables"
        )
        (findings.errors if is_strict else findings.warnings).append(message)


def check_cross_references(
    compose_path: Path, readme_path: Path, *, is_strict: bool
) -> tuple[Findings, int, int]:
    """Every cross-reference check of one compose file: findings, services and interpolations counted."""
    document = load_compose(compose_path)
    findings = Findings()
    services: Node = document.get("services") or {}
    base = compose_path.resolve().parent
    documented = documented_variables(readme_path)
    if "version" in document:
        findings.errors.append("top-level `version` is obsolete in the Compose Specification: remove it")
    check_builds(services, base, findings)
    if cycle := find_cycle(dependency_graph(services, base, findings)):
        findings.errors.append(f"depends_on has a cycle: {' -> '.join(cycle)}")
    check_volumes(document, services, findings)
    references = check_interpolations(document, documented, findings)
    check_secrets(compose_path, findings)
    check_environment_documented(services, documented, findings, is_strict=is_strict)
    return findings, len(services), len(references)


def main(arguments: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check-compose", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--strict", action="store_true", help="undocumented variables of the stack's services are errors"
    )
    parser.add_argument(
        "compose_file",
        nargs="?",
        type=Path,
        default=Path(os.environ.get("COMPOSE_FILE", "docker-compose.yml")),
        help="the compose file (default: $COMPOSE_FILE or docker-compose.yml)",
    )
    options = parser.parse_args(arguments)
    compose_path: Path = options.compose_file
    if not compose_path.is_file():
        print(f"check-compose: {compose_path} not found", file=sys.stderr)
        return 1

    print(f"check-compose: {compose_path} against the Compose Specification schema")
    # check-jsonschema is installed next to this interpreter (the venv's bin folder).
    check_jsonschema = Path(sys.executable).parent / "check-jsonschema"
    schema_check = [str(check_jsonschema), "--builtin-schema", "vendor.compose-spec", str(compose_path)]
    if subprocess.run(schema_check, check=False).returncode != 0:
        print(
            f"check-compose: {compose_path} does not follow the Compose Specification (see above)",
            file=sys.stderr,
        )
        return 1

    print(f"check-compose: {compose_path} cross-references")
    try:
        findings, service_count, reference_count = check_cross_references(
            compose_path, Path("README.md"), is_strict=options.strict
        )
    except ComposeFileError as error:
        print(f"check-compose: {error}", file=sys.stderr)
        return 1
    for warning in findings.warnings:
        print(f"check-compose: warning: {warning}", file=sys.stderr)
    if findings.errors:
        for error_message in findings.errors:
            print(f"check-compose: error: {error_message}", file=sys.stderr)
        print(f"check-compose: {compose_path} failed {len(findings.errors)} check(s)", file=sys.stderr)
        return 1
    print(
        f"check-compose: ok -- {service_count} services, {reference_count} interpolations"
        + (f", {len(findings.warnings)} warning(s)" if findings.warnings else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
