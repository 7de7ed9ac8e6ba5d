#!/usr/bin/env bash
# Puts Prometheus's `promtool` (which checks alert rules) in the virtual environment: Debian's `prometheus`
# package, downloaded with `apt-get download` (no root, nothing installed system-wide, no daemon started)
# and only its promtool extracted. Usage: scripts/ensure-promtool.sh [VENV]; prints the version.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${VENV:-.venv}}
TARGET="$VENV/bin/promtool"
if [[ ! -x "$TARGET" ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
    # The package lists may be missing on a fresh machine (as on CI's): read them once, then try again.
    if [[ $(id -u) -eq 0 ]]; then apt-get update -qq >/dev/null; else sudo -n apt-get update -qq >/dev/null; fi
    (cd "$work" && apt-get download prometheus >/dev/null 2>&1) \
      || { echo "ensure-promtool: could not download Debian's prometheus package" >&2; exit 1; }
  fi
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  install -m 0755 "$work/root/usr/bin/promtool" "$TARGET"
fi
"$TARGET" --version 2>&1 | head -1
