"""Headless Chromium for the tests that look at pages (the HTML report, Argilla's UI, the service's dashboard):
paths, arguments, a Selenium driver, and what the browser showed when a test failed."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.require import missing, require_module

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


@contextlib.contextmanager
def selenium_chromium(profile: Path, window: str = "1400,1000") -> Iterator[Any]:
    """Headless Chromium driven through /usr/bin/chromedriver (Selenium), with a fresh profile; quit at the end."""
    require_module("selenium", "pip install -e '.[dev]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in chromium_args(profile, window):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def saved_on_failure(driver: Any, folder: Path) -> Iterator[None]:
    """On any failure, keep what the browser showed: failure.png and failure.html in ``folder``."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(Exception):
            driver.save_screenshot(str(folder / "failure.png"))
            (folder / "failure.html").write_text(driver.page_source, encoding="utf-8")
            exc.add_note(f"browser at {driver.current_url}; screenshot and page in {folder}")
        raise
