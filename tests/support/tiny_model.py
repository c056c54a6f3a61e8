"""A tiny Llama-architecture chat model built in-process (seconds, no downloads) for unit tests.

It has a byte-level BPE tokenizer (vocab ~512) with a ChatML chat template like SmolLM2's, and a 2-layer
LlamaForCausalLM with hidden size 64, saved as safetensors so every code path that loads "any Hugging Face
model folder" can load it.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Where is my card? I lost my card yesterday and need a new one.",
    "How do I reset my password? My account is locked.",
    "I want a refund for my order. The package never arrived.",
    "card_lost password_reset refund_request delivery_status cancel_subscription",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>@#$%^&*-_=+/\\|~`",
    "Classify the customer message into one intent. Answer with the intent label only.",
    "user assistant system Hello, how can I help you today? Thanks! Goodbye.",
]


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Write a tokenizer + tiny LlamaForCausalLM to ``folder`` (created) and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def randomize_weights(folder: Path, scale: float = 0.3, seed: int = 1) -> Path:
    """Overwrite every non-norm weight in ``folder`` with N(0, scale^2) noise (seeded) and save it back.

    The default init answers nothing but newlines; larger random weights make answers differ in content and
    length across prompts, which makes batching bugs visible.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def scale_embeddings(source: Path, folder: Path, factor: float = 6.0) -> Path:
    """A copy of the tiny model in ``source`` with its (tied) embeddings scaled by ``factor``, written to ``folder``.

    At the default init (std 0.02, hidden 64) the largest logit gap a frozen lm_head allows is about 1, so LoRA
    cannot move the loss far below ln(vocab); scaled embeddings let a few dozen steps show real learning.
    """
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(factor)
    model.save_pretrained(folder, safe_serialization=True)
    for file in source.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(file, folder / file.name)
    return folder
