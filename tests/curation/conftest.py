"""Fixtures for the curation tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.catalog import Catalog
from tests.curation.review_support import ReviewEnv, review_environment


@pytest.fixture
def catalog(workspace: Path) -> Catalog:
    """A fresh, migrated catalog in the test's workspace."""
    cat = Catalog(workspace / "catalog.duckdb")
    cat.migrate()
    return cat


@pytest.fixture(scope="module")
def review_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReviewEnv]:
    """A planted, scanned workspace with its own real Argilla server, one per test module (stopped after)."""
    with review_environment(tmp_path_factory.mktemp("review")) as env:
        yield env
