"""The one way tests start a browser: Debian's Chromium, driven by Playwright.

Playwright launches the real binary through `executable_path` (never `playwright install`: Debian's build
plays H.264/AAC and native HLS, Playwright's own does not), and not the `/usr/bin/chromium` wrapper, which
adds flags of its own. `scripts/ensure-chromium.sh` installs the package.
"""

from __future__ import annotations

import os
from typing import Final

from playwright.sync_api import Browser, Playwright

CHROMIUM: Final = os.environ.get("STILLPOINT_PLAYWRIGHT_CHROMIUM", "/usr/lib/chromium/chromium")
LAUNCH_ARGS: Final = (
    # The page's preview starts sounding seconds after the click, when the user gesture has run out (a
    # `play()` from page.evaluate carries a gesture of its own and would hide that): lift the policy instead.
    "--autoplay-policy=no-user-gesture-required",
    # Containers give /dev/shm 64 MiB, too little for decoded video frames.
    "--disable-dev-shm-usage",
    "--mute-audio",
)


def missing_chromium() -> str | None:
    """Why no browser can start here (a message naming the fix), or None when Chromium is installed."""
    if os.access(CHROMIUM, os.X_OK):
        return None
    return f"no Chromium at {CHROMIUM}: run `bash scripts/ensure-chromium.sh` (`make test` does)"


def launch_chromium(playwright: Playwright) -> Browser:
    """Headless Chromium with the project's flags; a broken install fails here with Chromium's own words."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=list(LAUNCH_ARGS))
