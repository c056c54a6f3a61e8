"""Training config: defaults, every problem reported at once, LoRA targets per architecture."""

from __future__ import annotations

import pytest

from training.config import ConfigError, TrainConfig, default_target_modules, load_train_config


def test_defaults_are_the_documented_ones() -> None:
    config = load_train_config({})
    assert (config.lora.rank, config.lora.alpha, config.lora.dropout) == (16, 32, 0.05)
    assert (config.learning_rate, config.epochs, config.batch_size, config.max_length) == (1e-3, 1, 8, 512)
    assert config.lr_schedule == "cosine" and config.lora.target_modules is None
    assert all(field.description for field in TrainConfig.model_fields.values())


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_train_config(
            {"learning_rate": -1, "batch_size": 0, "lr_schedule": "step", "lora": {"rank": 0}, "epocs": 3}
        )
    message = str(info.value)
    for where in ("learning_rate", "batch_size", "lr_schedule", "lora.rank", "epocs"):
        assert f"  {where}:" in message
    assert "5 problem(s)" in message


def test_inconsistent_combinations_are_refused() -> None:
    with pytest.raises(ConfigError, match="early_stopping_patience needs eval_every"):
        load_train_config({"early_stopping_patience": 2, "eval_every": None})


def test_default_targets_per_architecture() -> None:
    assert default_target_modules("llama", []) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert default_target_modules("gpt2", []) == ["c_attn"]
    assert default_target_modules("newarch", ["m.layers.0.attn.in_proj", "m.layers.0.fc", "lm_head"]) == ["in_proj"]
    with pytest.raises(ConfigError, match=r"set lora\.target_modules"):
        default_target_modules("newarch", ["fc1", "lm_head"])


def test_importing_training_loads_no_heavy_library() -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, training; print(sorted({'torch', 'transformers', 'peft', 'matplotlib'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
