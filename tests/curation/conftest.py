"""Fixtures for the curation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.catalog import Catalog


@pytest.fixture
def catalog(workspace: Path) -> Catalog:
    """A fresh, migrated catalog in the test's workspace."""
    cat = Catalog(workspace / "catalog.duckdb")
    cat.migrate()
    return cat
