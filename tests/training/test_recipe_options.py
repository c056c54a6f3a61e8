"""Recipe options beyond plain LoRA on the tiny model: full fine-tuning, precision, QLoRA refusal on CPU."""

from __future__ import annotations

import json

import pytest

from tests.training.conftest import PAIRS
from training.config import ConfigError, TrainConfig, load_train_config
from training.inference import generate, load_for_inference
from training.recipe import train_lora

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_full_fine_tune_saves_a_standalone_model_that_learned(trainable_tiny_dir, toy_task, tmp_path) -> None:
    train, validation = toy_task
    config = TrainConfig.model_validate(
        {"method": "full", "learning_rate": 3e-3, "max_steps": 12, "batch_size": 8, "eval_every": 4}
    )
    out = tmp_path / "full"
    result = train_lora(trainable_tiny_dir, train, validation, config, out)
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "curves.json"} <= names and "adapter_config.json" not in names
    assert result.trainable_params == result.total_params and result.target_modules == []
    curves = json.loads((out / "curves.json").read_text())
    assert result.val_loss is not None and result.val_loss < 0.9 * curves["validation"][0]["loss"]
    model, tokenizer = load_for_inference(out)  # loads like any base model folder, tokenizer included
    replies = [generate(model, tokenizer, [{"role": "user", "content": w}], max_new_tokens=6) for w in PAIRS]
    assert all(isinstance(r, str) for r in replies)


def test_cpu_trains_in_float32_by_default(trainable_tiny_dir, toy_task, tmp_path) -> None:
    train, _ = toy_task
    result = train_lora(trainable_tiny_dir, train[:8], [], TrainConfig(max_steps=1), tmp_path / "a")
    assert result.dtype == "float32" and result.device == "cpu" and result.val_loss is None


def test_qlora_on_cpu_is_refused_with_a_clear_error(trainable_tiny_dir, toy_task, tmp_path) -> None:
    train, validation = toy_task
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        train_lora(trainable_tiny_dir, train, validation, TrainConfig(quantization="4bit"), tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_option_combinations_are_checked() -> None:
    with pytest.raises(ConfigError, match="needs method: lora"):
        load_train_config({"method": "full", "quantization": "4bit"})
    with pytest.raises(ConfigError, match="precision"):
        load_train_config({"precision": "fp8"})
    assert load_train_config({}).precision == "auto" and load_train_config({}).trust_remote_code is False


def _adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_epoch_loss_normalization_weighs_every_token_the_same(trainable_tiny_dir, tmp_path) -> None:
    import torch

    from tests.training.conftest import conversation

    # answers of 1 to 34 words: steps of 4 examples hold very different numbers of assistant tokens
    train = [conversation(word, " ".join([label] * (1 + 3 * i))) for i, (word, label) in enumerate(PAIRS.items())] * 3

    def run(name: str, normalization: str, batch_size: int) -> dict[str, torch.Tensor]:
        config = TrainConfig.model_validate(
            {
                "max_steps": 3,
                "batch_size": batch_size,
                "loss_normalization": normalization,
                "eval_every": None,
                "group_by_length": True,  # batches of one length each: steps hold very different token counts
                "rehearsal": {"share": 0.0},  # exactly these 12 examples per epoch
            }
        )
        train_lora(trainable_tiny_dir, train, [], config, tmp_path / name)
        return _adapter_tensors(tmp_path / name)

    # one batch per step holding the whole set: the step's label tokens are the set's mean per step
    whole_step, whole_epoch = run("ws", "step", 12), run("we", "epoch", 12)
    assert all(torch.allclose(whole_step[k], whole_epoch[k], atol=1e-6) for k in whole_step)
    # batches of 4: steps hold different token counts, so the two normalizations give different updates
    part_step, part_epoch = run("ps", "step", 4), run("pe", "epoch", 4)
    assert any(not torch.allclose(part_step[k], part_epoch[k], atol=1e-6) for k in part_step)
