"""Audits every pinned version of a hashed lock for known vulnerabilities: `make audit`.

Online (the default), pip-audit asks an advisory service (`--service pypi`, PyPI's JSON API, or `osv`) about
each pin of the lock; the lock alone is read, so the audit needs no install and may run on any machine.
When the service cannot be reached, pip-audit skips every package and still says "No known vulnerabilities
found": this script counts the skipped packages and says plainly that the audit did not run.

Offline: copy OSV's PyPI advisories (`https://osv-vulnerabilities.storage.googleapis.com/PyPI/all.zip`, one
JSON file per advisory) onto the machine and run `make audit AUDIT_DB=path/to/all.zip`: the pins are
matched against the advisories locally, with no network at all.

Exit status: 0 no known vulnerability; 1 vulnerabilities found (or the audit failed); 3 the advisory service
could not be reached (0 instead, with the warning, under `--unreachable warn`).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

UNREACHABLE = 3
# `name==version` at the start of a lock line; hashes, comments and markers follow it.
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


@dataclass(frozen=True)
class Finding:
    """One advisory that applies to one pinned package."""

    name: str
    version: str
    advisory: str
    fixed_in: tuple[str, ...] = ()


def read_pins(lock: Path) -> dict[str, str]:
    """The lock's pins, by canonical name."""
    pins: dict[str, str] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def match_advisories(pins: Mapping[str, str], advisories: Iterable[Mapping[str, object]]) -> list[Finding]:
    """The OSV advisories (PyPI ecosystem) that affect a pinned version: listed among its versions, or
    within one of its ECOSYSTEM ranges (introduced <= version < fixed, or <= last_affected)."""
    findings = []
    for advisory in advisories:
        if advisory.get("withdrawn"):
            continue
        for affected in _list(advisory.get("affected")):
            package = _dict(affected.get("package"))
            if package.get("ecosystem") != "PyPI":
                continue
            name = canonicalize_name(str(package.get("name", "")))
            pinned = pins.get(name)
            if pinned is None or not _affects(affected, pinned):
                continue
            fixed = tuple(
                str(event["fixed"])
                for range_ in _list(affected.get("ranges"))
                for event in _list(range_.get("events"))
                if "fixed" in event
            )
            findings.append(Finding(name, pinned, str(advisory.get("id", "?")), fixed))
    return findings


def _affects(affected: Mapping[str, object], pinned: str) -> bool:
    if pinned in [str(version) for version in _list_of_any(affected.get("versions"))]:
        return True
    try:
        version = Version(pinned)
    except InvalidVersion:
        return False
    for range_ in _list(affected.get("ranges")):
        if range_.get("type") != "ECOSYSTEM":
            continue
        try:
            events = sorted(_list(range_.get("events")), key=lambda event: Version(str(_bound(event))))
        except InvalidVersion:
            continue
        # Walk the boundaries in order: each "introduced" at or below the version opens an interval, each
        # "fixed" at or below it (or "last_affected" below it) closes the one open.
        inside = False
        for event in events:
            bound = Version(str(_bound(event)))
            if "introduced" in event and version >= bound:
                inside = True
            elif ("fixed" in event and version >= bound) or ("last_affected" in event and version > bound):
                inside = False
        if inside:
            return True
    return False


def _bound(event: Mapping[str, object]) -> object:
    for key in ("introduced", "fixed", "last_affected"):
        if key in event:
            return event[key]
    return "0"


def read_osv_dump(path: Path) -> list[dict[str, object]]:
    """Every advisory in an OSV dump: a zip of JSON files, or a folder of them."""
    if path.is_dir():
        return [json.loads(file.read_text(encoding="utf-8")) for file in sorted(path.glob("*.json"))]
    with zipfile.ZipFile(path) as archive:
        return [json.loads(archive.read(name)) for name in archive.namelist() if name.endswith(".json")]


def audit_online(lock: Path, service: str, timeout_seconds: int) -> tuple[list[Finding], list[str], int]:
    """Runs pip-audit on the lock; returns the findings, the packages it could not audit, and the count."""
    command = [
        sys.executable, "-m", "pip_audit", "--requirement", str(lock), "--require-hashes", "--disable-pip",
        "--vulnerability-service", service, "--format", "json", "--progress-spinner", "off",
        "--timeout", str(timeout_seconds),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        # pip-audit ends in a traceback when the service's host cannot even be resolved.
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"audit: pip-audit gave no report ({reason})", file=sys.stderr)
        unreachable = any(word in result.stderr for word in ("ConnectionError", "NameResolution", "Timeout"))
        return [], ["*"] if unreachable else [], -1
    findings, skipped = [], []
    dependencies = _list(report.get("dependencies"))
    for dependency in dependencies:
        if "skip_reason" in dependency:
            skipped.append(str(dependency.get("name")))
        for vulnerability in _list(dependency.get("vulns")):
            findings.append(
                Finding(
                    str(dependency.get("name")),
                    str(dependency.get("version")),
                    str(vulnerability.get("id")),
                    tuple(str(version) for version in _list_of_any(vulnerability.get("fix_versions"))),
                )
            )
    return findings, skipped, len(dependencies)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("lock", type=Path, help="a hashed lock, such as requirements/dev.lock")
    parser.add_argument("--service", choices=("pypi", "osv"), default="pypi", help="the advisory service")
    parser.add_argument("--db", type=Path, help="an OSV PyPI dump (zip or folder): audit offline against it")
    parser.add_argument(
        "--unreachable",
        choices=("fail", "warn"),
        default="fail",
        help="what an unreachable advisory service does: fail (exit 3) or warn (exit 0)",
    )
    parser.add_argument("--timeout", type=int, default=15, help="seconds per request to the service")
    arguments = parser.parse_args(argv)
    pins = read_pins(arguments.lock)
    if arguments.db is not None:
        findings = match_advisories(pins, read_osv_dump(arguments.db))
        source = f"the advisories in {arguments.db}"
        skipped: list[str] = []
        total = len(pins)
    else:
        findings, skipped, total = audit_online(arguments.lock, arguments.service, arguments.timeout)
        source = f"the {arguments.service} advisory service"
    for finding in sorted(findings, key=lambda finding: (finding.name, finding.advisory)):
        fixed = f"; fixed in {', '.join(finding.fixed_in)}" if finding.fixed_in else "; no fix released"
        print(f"audit: {finding.name} {finding.version} is affected by {finding.advisory}{fixed}")
    if findings:
        print(f"audit: FAILED: {len(findings)} known vulnerabilities in {arguments.lock}", file=sys.stderr)
        return 1
    if skipped:
        count = "any" if skipped == ["*"] else f"{len(skipped)} of {total}"
        print(
            f"audit: NOT AUDITED: {source} could not be reached or did not know {count} packages of "
            f"{arguments.lock}, so no vulnerability was ruled out. Run it where the service is reachable, "
            "or offline: make audit AUDIT_DB=path/to/osv-PyPI-all.zip (see scripts/audit_lock.py).",
            file=sys.stderr,
        )
        return 0 if arguments.unreachable == "warn" else UNREACHABLE
    print(f"audit: {len(pins)} pinned packages of {arguments.lock}: no known vulnerabilities ({source})")
    return 0


def _list(value: object) -> list[dict[str, object]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _list_of_any(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


if __name__ == "__main__":
    sys.exit(main())
