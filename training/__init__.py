"""The LoRA training stage: base-model sources, chat formatting with assistant-only loss, a plain torch recipe.

Imports ``schemas`` only. Heavy libraries (torch, transformers, peft) are imported where they are used, so
``import training`` works without them and a missing one raises an error naming ``pip install 'refinery[train]'``.
"""

from training._deps import MissingDependencyError
from training.base_model import BaseModel, BaseModelError, resolve_base_model
from training.config import LoraConfigSpec, TrainConfig

__all__ = [
    "BaseModel",
    "BaseModelError",
    "LoraConfigSpec",
    "MissingDependencyError",
    "TrainConfig",
    "resolve_base_model",
]
