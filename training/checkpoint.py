"""Resumable training checkpoints: adapter weights, optimizer, scheduler, RNG and loop position.

A checkpoint is a folder ``step-00000050`` written atomically, so a run killed at any moment leaves either the
previous checkpoint or the new one, never half of one. It carries the fingerprint of the run (config, base
model, data); a rerun with the same arguments resumes from the latest checkpoint and ends with the same adapter
as an uninterrupted run, and a rerun with different arguments is refused rather than silently mixed.

Tensors are stored with safetensors; optimizer and scheduler state with ``torch.save`` and read back with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers (no arbitrary unpickling).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas.atomic import atomic_directory, clean_staging

_PREFIX = "step-"


class CheckpointError(Exception):
    """A checkpoint folder belongs to another run or cannot be read."""


@dataclass
class LoopState:
    """Everything about the loop's progress that a resumed run needs besides tensors."""

    fingerprint: str
    step: int = 0
    epoch: int = 0
    group: int = 0  # index of the next optimizer step's batch group within the epoch
    real_tokens: int = 0
    train_seconds: float = 0.0
    train_curve: list[dict[str, float]] = field(default_factory=list)
    val_curve: list[dict[str, float]] = field(default_factory=list)
    best_val: float | None = None
    best_step: int = 0
    evals_since_best: int = 0
    stopped_early: bool = False
    resumed_from_step: int | None = None


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    clean_staging(checkpoint_dir)
    found = sorted(p for p in checkpoint_dir.glob(f"{_PREFIX}*") if (p / "state.json").is_file())
    return found[-1] if found else None


def save_checkpoint(
    checkpoint_dir: Path,
    state: LoopState,
    adapter: dict[str, Any],
    best_adapter: dict[str, Any] | None,
    optimizer: Any,
    scheduler: Any,
) -> Path:
    """Write ``step-<n>`` atomically, then remove older checkpoints (the newest one is all a resume needs)."""
    import torch
    from safetensors.torch import save_file

    final = checkpoint_dir / f"{_PREFIX}{state.step:08d}"
    if final.exists():  # the same step saved by an earlier, interrupted attempt of this same run
        return final
    with atomic_directory(final) as staging:
        save_file({k: v.contiguous() for k, v in adapter.items()}, str(staging / "adapter.safetensors"))
        if best_adapter is not None:
            save_file({k: v.contiguous() for k, v in best_adapter.items()}, str(staging / "best_adapter.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
            staging / "optimizer.pt",
        )
        (staging / "state.json").write_text(json.dumps(asdict(state), indent=1))
    for older in checkpoint_dir.glob(f"{_PREFIX}*"):
        if older != final:
            shutil.rmtree(older, ignore_errors=True)
    return final


@dataclass
class Restored:
    state: LoopState
    adapter: dict[str, Any]
    best_adapter: dict[str, Any] | None


def load_checkpoint(folder: Path, fingerprint: str, optimizer: Any, scheduler: Any) -> Restored:
    """Read a checkpoint into ``optimizer`` and ``scheduler`` and restore the RNG; return the rest."""
    import torch
    from safetensors.torch import load_file

    try:
        state = LoopState(**json.loads((folder / "state.json").read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder}: unreadable checkpoint state ({exc})") from exc
    if state.fingerprint != fingerprint:
        raise CheckpointError(
            f"{folder} was written by a run with another config, base model or data; "
            "use a fresh checkpoint folder (or delete this one) to start over"
        )
    extra = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"]["torch"])
    if "cuda" in extra["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(extra["rng"]["cuda"]))
    best_path = folder / "best_adapter.safetensors"
    return Restored(
        state=state,
        adapter=load_file(str(folder / "adapter.safetensors")),
        best_adapter=load_file(str(best_path)) if best_path.is_file() else None,
    )
