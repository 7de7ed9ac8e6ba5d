#!/usr/bin/env bash
# Validates deploy/kubernetes/ offline: renders each overlay with kubectl's Kustomize and checks it against
# the Kubernetes schemas and the services' code; the checks live in scripts/check_kubernetes.py (where ruff
# and mypy see them). Usage: scripts/check-kubernetes.sh [OVERLAY_DIR ...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [[ ! -x "$VENV/bin/kubectl" || ! -x "$VENV/bin/kubernetes-validate" ]]; then
  echo "check-kubernetes: $VENV is not set up: run \`make install\`" >&2
  exit 1
fi
exec "$VENV/bin/python" -m scripts.check_kubernetes "$@"
