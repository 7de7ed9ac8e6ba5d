#!/usr/bin/env bash
# Makes sure Debian's headless-capable Chromium is installed for the browser tests (tests/chromium.py
# launches it through Playwright). Installs the `chromium` package with apt when /usr/bin/chromium is
# missing; needs root (or passwordless sudo) and a reachable Debian mirror. STILLPOINT_CHROMIUM names another
# binary to check instead, never installed (the tests take theirs from STILLPOINT_PLAYWRIGHT_CHROMIUM, the
# real binary rather than a wrapper script). Prints the version and exits 0 when Chromium is usable; exits
# non-zero with the reason otherwise.
set -euo pipefail

CHROMIUM=${STILLPOINT_CHROMIUM:-/usr/bin/chromium}
# A bare name (chromium-browser, google-chrome) is looked up on PATH, as the tests do.
CHROMIUM=$(command -v "$CHROMIUM" 2>/dev/null || echo "$CHROMIUM")

fail() {
  echo "ensure-chromium: $*" >&2
  exit 1
}

report() {
  # `--version` starts no browser window and needs no display.
  local version
  version=$("$CHROMIUM" --version 2>/dev/null) || fail "$CHROMIUM is installed but \`--version\` fails"
  echo "ensure-chromium: $version"
}

if [[ -x "$CHROMIUM" ]]; then
  report
  exit 0
fi
[[ -z "${STILLPOINT_CHROMIUM:-}" ]] || fail "STILLPOINT_CHROMIUM=$CHROMIUM is not an executable file"

command -v apt-get >/dev/null 2>&1 || fail "$CHROMIUM is missing and apt-get is not available: install Chromium by hand"

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  fail "$CHROMIUM is missing; run as root (or with passwordless sudo): apt-get install -y chromium"
fi

export DEBIAN_FRONTEND=noninteractive
echo "ensure-chromium: installing the chromium package with apt-get"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# A fresh container has empty package lists; try the install first and update only when it is needed.
if ! "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >"$log" 2>&1; then
  if ! "${as_root[@]}" apt-get update -qq >"$log" 2>&1; then
    cat "$log" >&2
    fail "apt-get update failed (is a Debian mirror reachable?)"
  fi
  if ! "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >"$log" 2>&1; then
    cat "$log" >&2
    fail "apt-get install chromium failed (see above)"
  fi
fi

[[ -x "$CHROMIUM" ]] || fail "the chromium package is installed but $CHROMIUM does not exist"
report
