"""Use a trained adapter: load base + adapter, generate greedily from a conversation, merge into one model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schemas.atomic import atomic_directory
from training._deps import require_train_deps
from training.base_model import check_model_folder
from training.formatting import Message


def load_for_inference(
    base_path: Path, adapter_path: Path | None = None, trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode: the base folder's weights, with the LoRA adapter applied if given.

    float32 on CPU, bf16 on a GPU that supports it; weights load from safetensors only.
    """
    require_train_deps()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_folder(Path(base_path), trust_remote_code)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    model: Any = AutoModelForCausalLM.from_pretrained(
        base_path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    model.to("cuda" if cuda else "cpu")
    if adapter_path is not None:
        from peft import PeftModel

        if not (Path(adapter_path) / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"{adapter_path} has no adapter_model.safetensors")
        model = PeftModel.from_pretrained(model, str(adapter_path))
    model.eval()
    return model, tokenizer


def generate(
    model: Any,
    tokenizer: Any,
    messages: Sequence[Message],
    max_new_tokens: int = 128,
    system_prompt: str | None = None,
) -> str:
    """The model's greedy reply to ``messages`` (special tokens removed, surrounding whitespace stripped)."""
    import torch

    if system_prompt is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    inputs = tokenizer.apply_chat_template(
        [dict(m) for m in messages], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
    reply = output[0, inputs["input_ids"].shape[1] :]
    return str(tokenizer.decode(reply, skip_special_tokens=True)).strip()


def merge_adapter(base_path: Path, adapter_path: Path, out_dir: Path, trust_remote_code: bool = False) -> Path:
    """Fold the adapter into the base weights and write a standalone safetensors model folder + tokenizer.

    The merged model needs no peft at inference time; it is written in float32 (or the GPU's bf16) and
    appears complete or not at all.
    """
    model, tokenizer = load_for_inference(base_path, adapter_path, trust_remote_code)
    merged = model.merge_and_unload()
    with atomic_directory(Path(out_dir)) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return Path(out_dir)
