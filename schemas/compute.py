"""Compute settings shared by the stages that run a model (training and evaluation)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` torch CPU threads (None: leave torch's setting), restoring it afterwards.

    On a shared, busy CPU one thread can be several times faster than torch's default of one per core:
    OpenMP threads wait on each other when another process holds a core (measured on 2 cores: SmolLM2
    training 74 vs 12 real tokens/s, decoding 5x slower with 2 threads next to another busy process).
    """
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
