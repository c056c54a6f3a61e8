"""Fixtures the service tests share: a workspace with the whole chain made by the real CLI, and one running server
over it (session-scoped: the chain takes a while, and the read tests and schemathesis only read it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.chain_support import build_chain
from tests.support.require import require_module
from tests.support.service import Service, running_service


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """ingest, a scan, a snapshot, a 3-step adapter of the tiny model, an eval that fails the gate, a forced
    promotion: the ids of each (``ws`` is the workspace folder)."""
    return build_chain(tmp_path_factory.mktemp("service-chain"))


@pytest.fixture(scope="session")
def chain_service(chain: dict[str, Any]) -> Iterator[Service]:
    """The real `refinery serve` over the chain's workspace, without job runs (nothing here submits one)."""
    require_module("fastapi", "pip install 'refinery[service]'")
    require_module("uvicorn", "pip install 'refinery[service]'")
    with running_service(Path(chain["ws"])) as service:
        yield service
