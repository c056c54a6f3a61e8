"""Training configuration: validated data with defaults and help text.

Every field says what it does and why its default is what it is. :func:`load_train_config` reports every
problem at once (unknown keys, bad values, inconsistent combinations) rather than the first one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: LoRA targets per architecture (``config.model_type``): the attention projections, the usual LoRA choice.
ATTENTION_TARGETS: dict[str, list[str]] = {
    **{
        model_type: ["q_proj", "k_proj", "v_proj", "o_proj"]
        for model_type in ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2")
    },
    "gpt2": ["c_attn"],
    "phi3": ["qkv_proj", "o_proj"],
}


class ConfigError(ValueError):
    """A training configuration is invalid; the message lists every problem, one per line."""


class LoraConfigSpec(BaseModel):
    """The LoRA adapter: which layers get low-rank updates, and how large they are."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(default=16, ge=1, le=1024, description="LoRA rank r: size of the low-rank update.")
    alpha: int = Field(
        default=32, ge=1, description="LoRA alpha; the update is scaled by alpha / rank (2.0 by default)."
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input during training.")
    target_modules: list[str] | None = Field(
        default=None,
        description="Names of the Linear layers to adapt. None: chosen per architecture "
        "(q/k/v/o_proj for Llama, Mistral, Qwen; c_attn for GPT-2; else every Linear named *proj).",
    )


class RehearsalSpec(BaseModel):
    """General conversations mixed into the training data so the adapter keeps answering in general."""

    model_config = ConfigDict(extra="forbid")

    share: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Fraction of the mixed training set that is general conversations (0 turns rehearsal off). "
        "0.1: measured in docs/EVAL.md against the general-capability check and task accuracy.",
    )
    max_tokens: int = Field(
        default=256,
        ge=16,
        description="General conversations longer than this many tokens (chat template included) are not drawn: one "
        "long conversation makes its whole batch long (253 of the 300 shipped fit at 256, 139 tokens on average, "
        "against about 50 for an intent example).",
    )
    weighting: Literal["example", "token"] = Field(
        default="example",
        description="example: each general conversation weighs in the loss like an average task example, whatever "
        "its length (its tokens' loss is scaled down), so share is also the general conversations' share of the "
        "gradient. token: every assistant token weighs the same (a 150-token general answer then outweighs "
        "dozens of label answers).",
    )
    path: str | None = Field(
        default=None,
        description='JSONL of general conversations ({"messages": [...]} ending with an assistant turn); default: '
        "the 300 shipped in the package (OpenAssistant and Self-Instruct, Apache-2.0, disjoint from the eval "
        "check's references).",
    )


class TrainConfig(BaseModel):
    """Everything that decides a LoRA run. The same config + data + base model gives the same adapter."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "full"] = Field(
        default="lora",
        description="lora: train a low-rank adapter on the frozen base (small, fast, the default). full: update "
        "every weight and save a whole model folder (needs several times the memory and a learning rate around "
        "1e-5 to 5e-5; the lora section is ignored).",
    )
    lora: LoraConfigSpec = Field(default_factory=LoraConfigSpec, description="The adapter's shape.")
    quantization: Literal["none", "4bit"] = Field(
        default="none",
        description="4bit: QLoRA, the frozen base loaded as 4-bit NF4 through bitsandbytes (CUDA only; "
        "pip install bitsandbytes). Cuts the base's memory by about 4x for models of billions of parameters.",
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="dtype of the frozen base weights (LoRA weights stay float32). auto: bfloat16 on a GPU that "
        "supports it, float32 on CPU (CPUs without bf16 matrix units run bf16 matmuls tens of times slower: "
        "measured 0.8 vs 34-57 GFLOP/s on this project's AVX2 machines).",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the base model folder's own Python code to run (config.json auto_map). Off: only "
        "architectures built into transformers load.",
    )
    learning_rate: float = Field(
        default=1e-3,
        gt=0,
        le=1,
        description="Peak AdamW learning rate. 1e-3 because LoRA on small models needs roughly 10x a full "
        "fine-tune's rate: on SmolLM2-135M, r=16 on q/k/v/o at 1e-3 reached 92% on banking77 in 3 epochs "
        "(docs ENVIRONMENT.md). Use 1e-4 to 2e-4 for models of several billion parameters.",
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay on the LoRA weights.")
    epochs: int = Field(default=1, ge=1, description="Passes over the training set (ignored if max_steps).")
    max_steps: int | None = Field(
        default=None, ge=1, description="Optimizer steps to run; when set it wins over epochs."
    )
    batch_size: int = Field(default=8, ge=1, description="Conversations per forward pass.")
    grad_accum: int = Field(
        default=1, ge=1, description="Forward passes per optimizer step (effective batch = batch_size x this)."
    )
    warmup_ratio: float = Field(
        default=0.05, ge=0, lt=1, description="Fraction of the steps with a linear warm-up from 0."
    )
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="Decay after warm-up: cosine or linear to 0, or constant."
    )
    max_grad_norm: float | None = Field(
        default=1.0, gt=0, description="Clip the gradient norm to this; None = no clipping."
    )
    max_length: int = Field(
        default=512,
        ge=8,
        description="Longest tokenized conversation. SmolLM2 was trained with 2048-token contexts; 512 keeps "
        "CPU steps short. Longer conversations follow `overlength`.",
    )
    overlength: Literal["truncate_left", "drop"] = Field(
        default="truncate_left",
        description="What to do with a conversation longer than max_length. truncate_left: drop its oldest "
        "tokens (the start of the prompt), keeping the last assistant turn whole; if even that does not fit "
        "the conversation is dropped. drop: skip it. Both are counted in the result.",
    )
    group_by_length: bool = Field(
        default=False,
        description="Batch conversations of similar length (shuffled mega-batches of 32 batches) so little compute "
        "goes to padding; False (default) = shuffled batches, each padded to its own longest. B5 (256 banking77 "
        "conversations, 32 steps): grouping ran 2.37x TRL's tokens/s but ended at a 3.6% higher validation loss "
        "(the whole set was one mega-batch, so steps were far from i.i.d.); shuffled batches 1.51x at a 1.8% lower "
        "loss. Turn it on for large sets (many mega-batches), where it keeps the speed with random steps.",
    )
    loss_normalization: Literal["step", "epoch"] = Field(
        default="step",
        description="What each optimizer step's summed assistant-token loss is divided by. step: that step's own "
        "label-token count (the usual per-batch token mean). epoch: the mean label-token count of a step over the "
        "training set, a constant, so every assistant token weighs the same whatever batch it falls in; with "
        "length-grouped batches, per-step means over-weight the tokens of short-answer batches.",
    )
    eval_every: int | None = Field(
        default=50, ge=1, description="Validation loss every this many optimizer steps (and always at the end)."
    )
    early_stopping_patience: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many evaluations without a new best validation loss; None = off.",
    )
    checkpoint_every: int = Field(
        default=50, ge=1, description="Steps between resumable checkpoints (when a checkpoint dir is given)."
    )
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch CPU threads during the run (restored after); None = torch's default (all cores). "
        "On a shared, busy machine 1 thread can be several times faster: measured 74 vs 12 real tokens/s "
        "for SmolLM2 on 2 cores under a load of 3 (OpenMP threads wait on each other).",
    )
    seed: int = Field(default=0, ge=0, description="Seeds the LoRA init, dropout and the batch order.")
    rehearsal: RehearsalSpec = Field(
        default_factory=RehearsalSpec, description="Rehearsal: general conversations mixed into the training set."
    )
    system_prompt: str | None = Field(
        default=None,
        description="Prepended as a system message to conversations that have none (also use it at inference).",
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainConfig:
        problems = []
        if self.early_stopping_patience is not None and self.eval_every is None:
            problems.append("early_stopping_patience needs eval_every (evaluations to count)")
        if self.lora.target_modules is not None and not self.lora.target_modules:
            problems.append("lora.target_modules is empty; use None for the per-architecture default")
        if self.quantization == "4bit" and self.method != "lora":
            problems.append("quantization: 4bit trains a LoRA adapter on a frozen 4-bit base; it needs method: lora")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_train_config(data: Mapping[str, Any] | None = None) -> TrainConfig:
    """Validate ``data`` into a :class:`TrainConfig`, raising :class:`ConfigError` listing every problem."""
    try:
        return TrainConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "config"
            lines.append(f"  {where}: {error['msg']}")
        raise ConfigError(f"invalid training config ({len(lines)} problem(s)):\n" + "\n".join(lines)) from exc


def default_target_modules(model_type: str, linear_names: Iterable[str]) -> list[str]:
    """LoRA targets for an architecture; unknown ones get every Linear layer whose name ends in ``proj``."""
    if model_type in ATTENTION_TARGETS:
        return list(ATTENTION_TARGETS[model_type])
    names = sorted({name.rsplit(".", 1)[-1] for name in linear_names})
    projections = [name for name in names if name.endswith("proj")]
    if not projections:
        raise ConfigError(
            f"no default LoRA targets for model type {model_type!r} (no Linear layer named *proj); "
            f"set lora.target_modules from: {', '.join(names) or 'none found'}"
        )
    return projections
