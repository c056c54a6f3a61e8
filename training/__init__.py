"""The LoRA training stage: base-model sources, chat formatting with assistant-only loss, a plain torch recipe.

Imports ``schemas`` only. Heavy libraries (torch, transformers, peft, matplotlib) are imported where they are
used, so ``import training`` works without them and a missing one raises an error naming
``pip install 'refinery[train]'``.
"""

from training._deps import MissingDependencyError
from training.base_model import BaseModel, BaseModelError, resolve_base_model
from training.checkpoint import CheckpointError
from training.config import ConfigError, LoraConfigSpec, TrainConfig, load_train_config
from training.formatting import FormattingError, format_conversations, tokenize_conversation
from training.inference import generate, load_for_inference, merge_adapter
from training.recipe import TrainResult, train_lora

__all__ = [
    "BaseModel",
    "BaseModelError",
    "CheckpointError",
    "ConfigError",
    "FormattingError",
    "LoraConfigSpec",
    "MissingDependencyError",
    "TrainConfig",
    "TrainResult",
    "format_conversations",
    "generate",
    "load_for_inference",
    "load_train_config",
    "merge_adapter",
    "resolve_base_model",
    "tokenize_conversation",
    "train_lora",
]
