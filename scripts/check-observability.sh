#!/usr/bin/env bash
# Validates deploy/observability/ offline (alert rules with promtool, the Grafana dashboard, and every metric
# they name against what the services export); the checks live in scripts/check_observability.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "check-observability: $VENV is not set up: run \`make install\`" >&2
  exit 1
fi
scripts/ensure-promtool.sh "$VENV" >/dev/null
exec "$VENV/bin/python" -m scripts.check_observability "$@"
