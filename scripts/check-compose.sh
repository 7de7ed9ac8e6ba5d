#!/usr/bin/env bash
# Validates docker-compose.yml without a Docker engine:
#   1. against the Compose Specification's JSON schema (check-jsonschema vendors it: works offline);
#   2. cross-references the schema cannot see: every build's Dockerfile exists, every depends_on target is a
#      defined service (a service_healthy one with a health check, no cycles), every named volume is
#      declared, every ${VAR} has a default or is documented in README.md, and no key-like secret is written
#      in the file.
# Variables the stack's own services get that README.md does not document are warnings; --strict makes
# them errors. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

COMPOSE_FILE=${COMPOSE_FILE:-docker-compose.yml}
VENV=${VENV:-.venv}
STRICT=0
for argument in "$@"; do
  case "$argument" in
    --strict) STRICT=1 ;;
    *) echo "usage: $0 [--strict]" >&2; exit 2 ;;
  esac
done

fail() { echo "check-compose: $*" >&2; exit 1; }

[[ -f "$COMPOSE_FILE" ]] || fail "$COMPOSE_FILE not found"
[[ -x "$VENV/bin/check-jsonschema" ]] || fail "$VENV/bin/check-jsonschema is missing: run \`make install\`"
[[ -x "$VENV/bin/python" ]] || fail "$VENV/bin/python is missing: run \`make install\`"

echo "check-compose: $COMPOSE_FILE against the Compose Specification schema"
if ! "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$COMPOSE_FILE"; then
  fail "$COMPOSE_FILE does not follow the Compose Specification (see above)"
fi

echo "check-compose: $COMPOSE_FILE cross-references"
"$VENV/bin/python" - "$COMPOSE_FILE" "$STRICT" <<'PYTHON'
"""Cross-reference checks of a compose file; ruamel.yaml comes with check-jsonschema."""

import re
import sys
from pathlib import Path

from ruamel.yaml import YAML

compose_path = Path(sys.argv[1])
strict = sys.argv[2] == "1"
errors: list[str] = []
warnings: list[str] = []

# The safe loader resolves anchors and merge keys (<<) as Compose does.
try:
    document = YAML(typ="safe", pure=True).load(compose_path.read_text(encoding="utf-8"))
except Exception as error:  # ruamel's YAMLError and DuplicateKeyError share no narrower public base
    sys.exit(f"check-compose: {compose_path} is not valid YAML: {error}")
if not isinstance(document, dict):
    sys.exit(f"check-compose: {compose_path} is not a mapping")
services = document.get("services") or {}
base = compose_path.resolve().parent
readme = Path("README.md").read_text(encoding="utf-8") if Path("README.md").is_file() else ""
documented = set(re.findall(r"`([A-Z][A-Z0-9_]*)`", readme))

if "version" in document:
    errors.append("top-level `version` is obsolete in the Compose Specification: remove it")

# Build contexts and Dockerfiles.
for name, service in services.items():
    build = service.get("build")
    if build is None:
        continue
    if isinstance(build, str):
        build = {"context": build}
    context = base / build.get("context", ".")
    if not context.is_dir():
        errors.append(f"services.{name}.build.context: {context} is not a folder")
        continue
    if "dockerfile_inline" in build:
        continue
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    if not dockerfile.is_file():
        errors.append(f"services.{name}.build.dockerfile: {dockerfile.relative_to(base)} does not exist")


def has_healthcheck(service: dict) -> bool:
    healthcheck = service.get("healthcheck")
    if isinstance(healthcheck, dict):
        test = healthcheck.get("test")
        if healthcheck.get("disable") in (True, "true") or test in (["NONE"], "NONE"):
            return False
        if test:
            return True
    build = service.get("build")
    if build is not None:
        build = {"context": build} if isinstance(build, str) else build
        dockerfile = base / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
        if dockerfile.is_file() and re.search(r"^\s*HEALTHCHECK\s+CMD", dockerfile.read_text(), re.M):
            return True
    return False


# depends_on: defined targets, health checks behind service_healthy, no cycles.
graph: dict[str, list[str]] = {}
for name, service in services.items():
    depends_on = service.get("depends_on") or {}
    targets = {target: {} for target in depends_on} if isinstance(depends_on, list) else depends_on
    graph[name] = list(targets)
    for target, options in targets.items():
        if target not in services:
            errors.append(f"services.{name}.depends_on: {target!r} is not a service of this file")
            continue
        condition = (options or {}).get("condition", "service_started")
        if condition == "service_healthy" and not has_healthcheck(services[target]):
            errors.append(f"services.{name}.depends_on.{target}: service_healthy, but {target} has no health check")
        if condition == "service_completed_successfully" and services[target].get("restart") not in (None, "no"):
            errors.append(
                f"services.{name}.depends_on.{target}: service_completed_successfully, but {target} restarts"
            )


def find_cycle() -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in graph.get(node, []):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target in graph and state.get(target) is None and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in graph:
        if state.get(node) is None and (cycle := visit(node)):
            return cycle
    return None


if cycle := find_cycle():
    errors.append(f"depends_on has a cycle: {' -> '.join(cycle)}")

# Named volumes must be declared at the top level.
declared_volumes = set(document.get("volumes") or {})
for name, service in services.items():
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source = volume.get("source") if volume.get("type", "volume") == "volume" else None
        else:
            source = str(volume).split(":", 1)[0] if ":" in str(volume) else None
        if source and not source.startswith((".", "/", "~", "$")) and source not in declared_volumes:
            errors.append(f"services.{name}.volumes: named volume {source!r} is not declared under `volumes:`")


# Interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+x}, $VAR; $$ is
# a literal dollar sign.
class Reference:
    def __init__(self, name: str, operator: str, where: str) -> None:
        self.name, self.operator, self.where = name, operator, where


NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def scan(text: str, where: str, found: list[Reference]) -> None:
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
                errors.append(f"{where}: unterminated ${{ in {text!r}")
                return
            body = text[index + 2 : end - 1]
            match = NAME.match(body)
            if not match:
                errors.append(f"{where}: malformed interpolation ${{{body}}} (use $$ for a literal $)")
            else:
                rest = body[match.end() :]
                operator = next((op for op in (":-", ":?", ":+", "-", "?", "+") if rest.startswith(op)), "")
                if rest and not operator:
                    errors.append(f"{where}: malformed interpolation ${{{body}}}")
                found.append(Reference(match.group(), operator, where))
                scan(rest[len(operator) :], where, found)
            index = end
            continue
        match = NAME.match(text, index + 1)
        if match:
            found.append(Reference(match.group(), "", where))
            index = match.end()
        else:
            errors.append(f"{where}: a lone $ in {text!r} (use $$ for a literal $)")
            index += 1


def walk(node: object, where: str, found: list[Reference]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            walk(value, f"{where}.{key}" if where else str(key), found)
    elif isinstance(node, list):
        for position, value in enumerate(node):
            walk(value, f"{where}[{position}]", found)
    elif isinstance(node, str):
        scan(node, where, found)


references: list[Reference] = []
# Extension fields (x-...) are reached through their aliases where they are used.
walk({key: value for key, value in document.items() if not str(key).startswith("x-")}, "", references)
# One message per variable: an anchor's values appear in every service that merges it.
missing: dict[tuple[str, str], list[str]] = {}
for reference in references:
    has_default = reference.operator in (":-", "-", ":+", "+")
    if not has_default and reference.name not in documented:
        needs = "is required" if "?" in reference.operator else "has no default"
        missing.setdefault((reference.name, needs), []).append(reference.where)
for (variable, needs), places in missing.items():
    errors.append(f"${{{variable}}} {needs} and is not documented in README.md (at {', '.join(places)})")

# Never a key in the file: interpolate it from the environment instead.
SECRET = re.compile(r"\b(sk-(?:proj-)?[A-Za-z0-9_-]{16,}|eyJ[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]+)")
for number, line in enumerate(compose_path.read_text(encoding="utf-8").splitlines(), start=1):
    if SECRET.search(line):
        errors.append(f"{compose_path}:{number}: looks like an API key or JWT; pass it through ${{VAR:-}} instead")

# The stack's own services (built here) should get only variables the README documents.
undocumented: dict[str, set[str]] = {}
for name, service in services.items():
    if "build" not in service:
        continue
    environment = service.get("environment") or {}
    keys = [item.split("=", 1)[0] for item in environment] if isinstance(environment, list) else environment
    for key in keys:
        if key not in documented:
            undocumented.setdefault(key, set()).add(name)
for key, names in sorted(undocumented.items()):
    message = f"{key} (set for {', '.join(sorted(names))}) is not documented in README.md's configuration tables"
    (errors if strict else warnings).append(message)

for warning in warnings:
    print(f"check-compose: warning: {warning}", file=sys.stderr)
if errors:
    for error in errors:
        print(f"check-compose: error: {error}", file=sys.stderr)
    sys.exit(f"check-compose: {compose_path} failed {len(errors)} check(s)")
print(
    f"check-compose: ok -- {len(services)} services, {len(references)} interpolations"
    + (f", {len(warnings)} warning(s)" if warnings else "")
)
PYTHON
