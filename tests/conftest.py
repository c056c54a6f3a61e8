"""Shared fixtures: a fresh workspace, the tiny in-process model, the real-data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.require import require_path
from tests.support.tiny_model import build_tiny_model, scale_embeddings

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress bars off in tests (the CLI tests turn them on where they check them)."""
    monkeypatch.setenv("REFINERY_PROGRESS", "0")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def trainable_tiny_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its embeddings scaled by 6, so a few dozen LoRA steps learn a task for real."""
    return scale_embeddings(tiny_model_dir, tmp_path_factory.mktemp("trainable-tiny"))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout: fails under CI when missing, skips elsewhere."""
    return require_path(SHARED_DATA, "the real-data tests read ../shared/data beside the checkout")
