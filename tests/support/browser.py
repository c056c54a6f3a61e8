"""Headless Chromium for the tests that look at pages (the HTML report, Argilla's UI): paths and arguments."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.require import missing

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def require_chromium() -> None:
    """Debian's chromium and chromium-driver: skipped without them, a failure under CI (`make system-deps`)."""
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists() and not shutil.which(p.name)]
    if absent:
        missing(f"{', '.join(absent)} not found: apt-get install chromium chromium-driver (or `make system-deps`)")


def chromium_args(profile: Path, window: str) -> list[str]:
    """Command-line arguments for a headless, offline, fresh-profile Chromium with a ``window`` ("W,H") size."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--window-size={window}",
        f"--user-data-dir={profile}",
    ]
