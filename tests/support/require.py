"""What a test needs from outside the repository: skipped where it is missing, a failure under CI.

A laptop without an optional extra or ``../shared/data`` skips the tests that need them and says why; CI (the
``CI`` environment variable, set by ``.ci/run``) must provide everything, so there a missing piece fails the test
instead of hiding a gap behind a skip.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def missing(what: str) -> NoReturn:
    """Skip with ``what`` as the reason, or fail with it under CI."""
    if in_ci():
        pytest.fail(f"{what}; CI must provide it", pytrace=False)
    pytest.skip(what)


def require_module(name: str, install: str) -> ModuleType:
    """The imported module ``name``; when it cannot be imported, :func:`missing` naming ``install``."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"{name} cannot be imported ({exc}): {install}")


def require_path(path: Path, why: str) -> Path:
    """``path`` when it exists, else :func:`missing` with ``why``."""
    if not path.exists():
        missing(f"{path} not found: {why}")
    return path
