from __future__ import annotations

import pytest

from schemas.compute import torch_threads
from tests.support.require import require_module


def test_torch_threads_sets_and_restores_the_thread_count() -> None:
    torch = require_module("torch", "pip install -e '.[train]' (torch pinned first: see the Makefile)")
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="the body failed"), torch_threads(target):
        raise RuntimeError("the body failed")
    assert torch.get_num_threads() == before  # restored on error too
    with torch_threads(None):
        assert torch.get_num_threads() == before
