#!/usr/bin/env bash
# Checks the contracts for breaking changes (Buf FILE rules) against the last committed state: uncommitted
# changes against HEAD, or HEAD against its parent when the tree is clean (as in CI's fresh clone).
set -euo pipefail
buf=.venv/bin/buf
if ! git rev-parse --verify -q HEAD >/dev/null; then
  echo "buf breaking: no commit yet, nothing to compare against"; exit 0
fi
if [ -n "$(git status --porcelain -- protos buf.yaml)" ]; then
  against=HEAD
else
  against=HEAD~1
fi
if ! git rev-parse --verify -q "$against" >/dev/null || [ -z "$(git ls-tree -r --name-only "$against" -- protos)" ]; then
  echo "buf breaking: $against has no protos, nothing to compare against"; exit 0
fi
# A shallow clone may lack the parent's objects; buf reads them from .git.
exec "$buf" breaking --against ".git#ref=$against"
