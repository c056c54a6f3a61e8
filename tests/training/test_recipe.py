"""The LoRA recipe on the tiny model: learning, best-adapter saving, reload, merge, early stopping, resume."""

from __future__ import annotations

import itertools
import json

import pytest

from tests.training.conftest import PAIRS, conversation
from training import checkpoint as ckpt
from training.config import TrainConfig
from training.formatting import PaddingCollator, format_conversations
from training.inference import generate, load_for_inference, merge_adapter
from training.recipe import lr_factor, train_lora, validation_loss

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _config(**overrides: object) -> TrainConfig:
    settings: dict[str, object] = {
        "learning_rate": 1e-2,
        "max_steps": 30,
        "batch_size": 8,
        "eval_every": 10,
        "lora": {"rank": 16, "dropout": 0.0},
        "rehearsal": {"share": 0.0},  # the recipe's mechanics on the toy task alone (tests/training/test_rehearsal.py)
    }
    settings.update(overrides)
    return TrainConfig.model_validate(settings)


def _greedy(model, tokenizer) -> list[str]:
    return [generate(model, tokenizer, [{"role": "user", "content": w}], max_new_tokens=6) for w in PAIRS]


def test_training_lowers_the_loss_and_saves_an_adapter_that_reloads(trainable_tiny_dir, toy_task, tmp_path):
    train, validation = toy_task
    out = tmp_path / "adapter"
    result = train_lora(trainable_tiny_dir, train, validation, _config(), out)

    assert {"adapter_model.safetensors", "adapter_config.json", "curves.json", "curves.png"} <= {
        p.name for p in out.iterdir()
    }
    curves = json.loads((out / "curves.json").read_text())
    assert [p["step"] for p in curves["train"]] == list(range(1, 31))
    assert [p["step"] for p in curves["validation"]] == [10, 20, 30]
    first, last = curves["train"][0]["loss"], result.train_loss
    assert last < 0.5 * first
    assert result.val_loss == min(p["loss"] for p in curves["validation"])
    assert result.steps == 30 and result.num_train == 32 and result.num_val == 4
    assert result.real_tokens == sum(p["tokens"] for p in curves["train"]) and result.tokens_per_second > 0
    assert 0 < result.trainable_params < result.total_params
    assert result.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert json.loads(json.dumps(result.to_json()))["best_step"] == result.best_step

    model, tokenizer = load_for_inference(trainable_tiny_dir, out)
    examples = format_conversations(tokenizer, validation).examples
    reloaded = validation_loss(model, examples, PaddingCollator(tokenizer.pad_token_id), batch_size=8)
    assert reloaded == pytest.approx(result.val_loss, rel=1e-5)  # the saved adapter is the best one
    tuned = _greedy(model, tokenizer)
    again, tokenizer2 = load_for_inference(trainable_tiny_dir, out)
    assert _greedy(again, tokenizer2) == tuned
    base, _ = load_for_inference(trainable_tiny_dir)
    assert _greedy(base, tokenizer) != tuned

    merged_dir = merge_adapter(trainable_tiny_dir, out, tmp_path / "merged")
    merged, merged_tokenizer = load_for_inference(merged_dir)
    assert _greedy(merged, merged_tokenizer) == tuned


def test_early_stopping_stops_and_keeps_the_best_adapter(trainable_tiny_dir, toy_task, tmp_path):
    train, _ = toy_task
    # Validation contradicts training (every label swapped), so its loss rises once the mapping is learned.
    labels = list(PAIRS.values())
    contradicting = [conversation(w, labels[(i + 1) % 4]) for i, w in enumerate(PAIRS)]
    config = _config(max_steps=60, eval_every=2, early_stopping_patience=2)
    result = train_lora(trainable_tiny_dir, train, contradicting, config, tmp_path / "adapter")
    curves = json.loads((tmp_path / "adapter" / "curves.json").read_text())
    assert result.stopped_early and result.steps < 60
    assert result.best_step == result.steps - 4  # two evaluations, two steps apart, without improvement
    assert all(p["loss"] > result.val_loss for p in curves["validation"][-2:])


def test_resume_after_interruption_ends_with_the_same_adapter(trainable_tiny_dir, toy_task, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    train, validation = toy_task
    config = _config(max_steps=10, eval_every=3, checkpoint_every=4, lora={"rank": 8, "dropout": 0.1})
    straight = train_lora(trainable_tiny_dir, train, validation, config, tmp_path / "straight")

    class Interrupted(Exception):
        pass

    real_save = ckpt.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Interrupted("killed after the checkpoint was written")

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Interrupted, match="killed after the checkpoint"):
        train_lora(trainable_tiny_dir, train, validation, config, tmp_path / "resumed", checkpoints)
    assert not (tmp_path / "resumed").exists() and (checkpoints / "step-00000004").is_dir()
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    resumed = train_lora(trainable_tiny_dir, train, validation, config, tmp_path / "resumed", checkpoints)

    assert resumed.resumed_from_step == 4 and resumed.steps == straight.steps == 10
    a = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    curve = lambda name: [p["loss"] for p in json.loads((tmp_path / name / "curves.json").read_text())["train"]]  # noqa: E731
    assert curve("straight") == curve("resumed")
    assert (resumed.val_loss, resumed.best_step) == (straight.val_loss, straight.best_step)
    assert not list(checkpoints.glob("step-*"))  # cleaned up once the adapter is saved


def test_a_checkpoint_from_another_run_is_refused(trainable_tiny_dir, toy_task, tmp_path, monkeypatch):
    train, validation = toy_task
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setattr(ckpt, "save_checkpoint", _save_once_then_stop(ckpt.save_checkpoint))
    with pytest.raises(KeyboardInterrupt, match="stopped after one checkpoint"):
        train_lora(
            trainable_tiny_dir, train, validation, _config(max_steps=6, checkpoint_every=2), tmp_path / "a", checkpoints
        )
    with pytest.raises(ckpt.CheckpointError, match="another config"):
        train_lora(trainable_tiny_dir, train, validation, _config(max_steps=6, seed=1), tmp_path / "a", checkpoints)


def _save_once_then_stop(real):
    def wrapper(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt("stopped after one checkpoint")

    return wrapper


def test_lr_schedule_warms_up_then_decays() -> None:
    factors = [lr_factor(s, 100, 0.1, "cosine") for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[10] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(factors[10:])) and factors[-1] > 0
    assert lr_factor(50, 100, 0.0, "linear") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0.0, "constant") == 1.0
