"""Fixtures for the training tests: a tiny model whose frozen logits can become confident, and a toy task."""

from __future__ import annotations

import pytest

PAIRS = {"apple": "refund_request", "card": "card_lost", "password": "password_reset", "parcel": "delivery_status"}


def conversation(word: str, label: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": word}, {"role": "assistant", "content": label}]


@pytest.fixture(scope="session")
def toy_task() -> tuple[list[list[dict[str, str]]], list[list[dict[str, str]]]]:
    """(train, validation): map a word to an intent label; validation holds the same four mappings."""
    train = [conversation(word, label) for word, label in PAIRS.items()] * 8
    validation = [conversation(word, label) for word, label in PAIRS.items()]
    return train, validation


@pytest.fixture
def one_torch_thread():
    """Tiny-model steps are too small to split across threads; on a shared CPU the OpenMP hand-offs cost more
    than the arithmetic (a 2-thread step was seen 50x slower under load), so tiny tests run on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
