#!/usr/bin/env bash
# Validates docker-compose.yml without a Docker engine; the checks live in scripts/check_compose.py (where
# ruff and mypy see them). Usage: scripts/check-compose.sh [--strict] [COMPOSE_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [[ ! -x "$VENV/bin/python" || ! -x "$VENV/bin/check-jsonschema" ]]; then
  echo "check-compose: $VENV is not set up: run \`make install\`" >&2
  exit 1
fi
exec "$VENV/bin/python" -m scripts.check_compose "$@"
