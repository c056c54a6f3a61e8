"""The LoRA recipe: setup, a plain torch training loop, validation, keep the best adapter, save.

Read it top to bottom: :func:`train_lora` is the whole run. No trainer framework: the loop calls torch and
peft directly so every step (batching, loss normalisation, clipping, schedule, evaluation, early stopping,
checkpointing) is visible here.

Loss is the mean over assistant tokens of each optimizer step (summed over its micro-batches, divided by
their label-token count), so gradient accumulation gives the same update as one large batch. With
``loss_normalization: epoch`` the sum is divided by a constant instead, the mean label-token count of a step over
the training set, so every assistant token weighs the same in every step (the logged loss stays the step's mean).
"""

from __future__ import annotations

import math
import random
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas.atomic import atomic_directory
from schemas.compute import torch_threads
from schemas.ids import canonical_json, sha256_text
from schemas.progress import progress
from training import checkpoint as ckpt
from training._deps import MissingDependencyError, require_train_deps
from training.base_model import BaseModel
from training.config import ConfigError, TrainConfig, default_target_modules
from training.curves import write_curves
from training.formatting import (
    FormattedSet,
    FormattingError,
    LengthGroupedBatchSampler,
    PaddingCollator,
    TokenizedExample,
    format_conversations,
    tokenize_conversation,
)
from training.loss import token_loss
from training.rehearsal import RehearsalMix, draw_rehearsal

Conversation = list[dict[str, str]]
LAST_N_STEPS = 10  # train_loss is the mean of the last this-many step losses


@dataclass
class TrainResult:
    train_loss: float  # mean loss over the last LAST_N_STEPS optimizer steps
    val_loss: float | None  # best validation loss (that of the saved adapter); None without validation data
    best_step: int
    steps: int
    epochs_done: float
    real_tokens: int  # non-padding tokens through forward + backward
    tokens_per_second: float  # real tokens per second of training compute (evaluation excluded)
    seconds: float  # wall time of the whole call
    peak_rss_mb: float  # peak resident memory of this process so far
    num_train: int
    num_val: int
    dropped_train: dict[str, int]
    dropped_val: dict[str, int]
    truncated_train: int
    truncated_val: int
    trainable_params: int
    total_params: int
    target_modules: list[str]
    device: str
    dtype: str
    stopped_early: bool = False
    resumed_from_step: int | None = None
    peak_gpu_mb: float | None = None
    rehearsal: dict[str, Any] = field(default_factory=dict)  # training/rehearsal.py RehearsalMix
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Run:
    model: Any
    train_set: FormattedSet
    val_set: FormattedSet
    sampler: LengthGroupedBatchSampler
    collator: PaddingCollator
    optimizer: Any
    scheduler: Any
    device: Any
    dtype: Any
    total_steps: int
    steps_per_epoch: int
    target_modules: list[str]
    tokenizer: Any
    mean_step_label_tokens: float  # label tokens per optimizer step, averaged over the training set
    general: list[Conversation]  # the rehearsal conversations drawn for this run
    rehearsal: RehearsalMix


def train_lora(
    base: BaseModel | Path,
    train: list[list[dict[str, str]]],
    validation: list[list[dict[str, str]]],
    config: TrainConfig,
    out_dir: Path,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``train`` and save the one with the best ``validation`` loss to ``out_dir``.

    ``train`` is the task's conversations; the configured share of general conversations is mixed in
    (training/rehearsal.py), each weighing like an average task example, and the result says how many.
    ``validation`` stays task-only: it picks the adapter.

    ``out_dir`` must not exist; it appears complete (adapter_model.safetensors, adapter_config.json,
    curves.json, curves.png) or not at all. With ``checkpoint_dir``, a checkpoint is written every
    ``config.checkpoint_every`` steps and a rerun with the same arguments resumes from the latest one.
    """
    require_train_deps()
    started = time.perf_counter()
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; adapters are immutable")
    with torch_threads(config.cpu_threads):
        return _train_and_save(base, train, validation, config, out_dir, checkpoint_dir, started)


def _train_and_save(
    base: BaseModel | Path,
    train: list[Conversation],
    validation: list[Conversation],
    config: TrainConfig,
    out_dir: Path,
    checkpoint_dir: Path | None,
    started: float,
) -> TrainResult:
    base_path = base.path if isinstance(base, BaseModel) else Path(base)
    trust = config.trust_remote_code or (isinstance(base, BaseModel) and base.trust_remote_code)
    run = _setup(base_path, trust, train, validation, config)
    fingerprint = _fingerprint(base, train + run.general, validation, config)
    state = ckpt.LoopState(fingerprint=fingerprint)
    best_adapter: dict[str, Any] | None = None
    if checkpoint_dir is not None and (latest := ckpt.latest_checkpoint(checkpoint_dir)) is not None:
        restored = ckpt.load_checkpoint(latest, fingerprint, run.optimizer, run.scheduler)
        _load_adapter(run.model, restored.adapter)
        state, best_adapter = restored.state, restored.best_adapter
        state.resumed_from_step = state.step

    best_adapter = _train_loop(run, state, config, checkpoint_dir, best_adapter)

    if best_adapter is not None:  # the best evaluation may predate the last step
        _load_adapter(run.model, best_adapter)
    with atomic_directory(out_dir) as staging:
        run.model.save_pretrained(staging, safe_serialization=True)
        if config.method == "full":  # a standalone model folder: loadable as a base model on its own
            run.tokenizer.save_pretrained(staging)
        result = _result(run, state, config, time.perf_counter() - started)
        result.rehearsal = run.rehearsal.to_json()
        write_curves(staging, state.train_curve, state.val_curve, result.to_json())
    if checkpoint_dir is not None:  # the adapter is safe; the checkpoints have served their purpose
        for folder in checkpoint_dir.glob("step-*"):
            shutil.rmtree(folder, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------------- setup


def _setup(
    base_path: Path, trust: bool, train: list[Conversation], validation: list[Conversation], config: TrainConfig
) -> _Run:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _seed_everything(config.seed)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = _base_dtype(config.precision, cuda)
    quantization = _quantization_config(config, cuda, dtype)

    tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust)
    fmt = {"max_length": config.max_length, "overlength": config.overlength, "system_prompt": config.system_prompt}
    train_set = format_conversations(tokenizer, train, **fmt)  # type: ignore[arg-type]
    val_set = format_conversations(tokenizer, validation, **fmt)  # type: ignore[arg-type]
    if not train_set.examples:
        raise ValueError(f"no usable training conversations (dropped: {dict(train_set.dropped)})")
    general, mix = draw_rehearsal(
        len(train), config.rehearsal.share, config.seed, config.rehearsal.path, _fits(tokenizer, config)
    )
    n_task = len(train_set.examples)  # the rehearsal conversations follow: batches never mix the two
    _add_rehearsal(train_set, format_conversations(tokenizer, general, **fmt), config)  # type: ignore[arg-type]

    load: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": trust}
    if quantization is not None:
        load.update(quantization_config=quantization, device_map={"": 0})
    model: Any = AutoModelForCausalLM.from_pretrained(base_path, **load)
    if quantization is None:
        model.to(device)
    if config.method == "full":
        targets: list[str] = []
        model.requires_grad_(True)
    else:
        model, targets = _add_lora(model, config, quantized=quantization is not None)
    model.train()

    sampler = LengthGroupedBatchSampler(
        [len(e.input_ids) for e in train_set.examples],
        config.batch_size,
        seed=config.seed,
        group_by_length=config.group_by_length,
        pools=[0] * n_task + [1] * (len(train_set.examples) - n_task),
        grouped_pools=[1],  # general conversations vary from 20 to 256 tokens: always batch similar lengths
    )
    steps_per_epoch = math.ceil(len(sampler) / config.grad_accum)
    mean_step_label_tokens = sum(e.weighted_label_tokens for e in train_set.examples) / max(steps_per_epoch, 1)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, config.warmup_ratio, config.lr_schedule)
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return _Run(
        model=model,
        train_set=train_set,
        val_set=val_set,
        sampler=sampler,
        collator=PaddingCollator(pad_token_id=pad_id),
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        dtype=dtype,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        target_modules=list(targets),
        tokenizer=tokenizer,
        mean_step_label_tokens=mean_step_label_tokens,
        general=general,
        rehearsal=mix,
    )


def _fits(tokenizer: Any, config: TrainConfig) -> Callable[[Conversation], bool]:
    """Whether a general conversation is short enough (``rehearsal.max_tokens``) to be drawn."""

    def fits(conversation: Conversation) -> bool:
        try:
            tokenize_conversation(tokenizer, conversation, config.rehearsal.max_tokens, "drop", config.system_prompt)
        except FormattingError:
            return False
        return True

    return fits


def _add_rehearsal(train_set: FormattedSet, general: FormattedSet, config: TrainConfig) -> None:
    """Append the general conversations to the task's, each weighing like an average task example by default."""
    if config.rehearsal.weighting == "example" and general.examples:
        mean_task_tokens = sum(e.num_label_tokens for e in train_set.examples) / len(train_set.examples)
        for example in general.examples:
            example.weight = mean_task_tokens / max(example.num_label_tokens, 1)
    train_set.examples.extend(general.examples)
    train_set.truncated += general.truncated
    for reason, count in general.dropped.items():
        train_set.dropped[f"rehearsal_{reason}"] += count


def _base_dtype(precision: str, cuda: bool) -> Any:
    """The frozen base's dtype: bf16 halves memory and is fast on GPUs; most CPUs are slow at bf16 matmuls."""
    import torch

    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32


def _quantization_config(config: TrainConfig, cuda: bool, dtype: Any) -> Any:
    """A 4-bit NF4 BitsAndBytesConfig for QLoRA, or None; a clear error where QLoRA cannot run."""
    if config.quantization == "none":
        return None
    if not cuda:
        raise ConfigError(
            "quantization: 4bit (QLoRA) needs a CUDA GPU: bitsandbytes 4-bit kernels do not run on CPU. "
            "Remove the setting to train a LoRA adapter on the float32 base"
        )
    try:
        import bitsandbytes  # noqa: F401  (transformers imports it itself; checked here for a clear message)
    except ImportError as exc:
        raise MissingDependencyError(
            "quantization: 4bit needs bitsandbytes, which is not installed: pip install bitsandbytes"
        ) from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def _add_lora(model: Any, config: TrainConfig, quantized: bool) -> tuple[Any, list[str]]:
    """Wrap ``model`` with trainable LoRA layers on the configured (or per-architecture default) targets."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:  # float32 norms and input grads so the adapter trains stably on a 4-bit base
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    linear_names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    targets = config.lora.target_modules or default_target_modules(model.config.model_type, linear_names)
    lora = LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), list(targets)  # adapter weights stay float32 even on a bf16 base


def lr_factor(step: int, total_steps: int, warmup_ratio: float, schedule: str) -> float:
    """Multiplier of the peak learning rate for 0-based optimizer step ``step``: linear warm-up, then decay."""
    warmup = int(warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup  # starts above 0: no step is wasted at lr 0
    if schedule == "constant":
        return 1.0
    done = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "linear":
        return 1.0 - done
    return 0.5 * (1.0 + math.cos(math.pi * done))


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _fingerprint(
    base: BaseModel | Path, train: list[Conversation], validation: list[Conversation], config: TrainConfig
) -> str:
    """What makes two runs the same run (checkpoint_every and cpu_threads may differ: they change no result
    beyond float summation order)."""
    settings = config.to_json()
    settings.pop("checkpoint_every")
    settings.pop("cpu_threads")
    return sha256_text(
        canonical_json(
            {
                "base": base.sha256 if isinstance(base, BaseModel) else str(Path(base).resolve()),
                "config": settings,
                "train": sha256_text(canonical_json([[dict(m) for m in c] for c in train])),
                "validation": sha256_text(canonical_json([[dict(m) for m in c] for c in validation])),
            }
        )
    )


# ---------------------------------------------------------------------------------------------- train


def _train_loop(
    run: _Run,
    state: ckpt.LoopState,
    config: TrainConfig,
    checkpoint_dir: Path | None,
    best_adapter: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Run optimizer steps until ``total_steps`` or early stopping; return the best adapter state."""
    import torch

    examples = run.train_set.examples
    with progress("train LoRA", total=run.total_steps) as bar:
        bar.advance(state.step)
        while state.step < run.total_steps and not state.stopped_early:
            batches = run.sampler.batches(state.epoch)
            groups = [batches[i : i + config.grad_accum] for i in range(0, len(batches), config.grad_accum)]
            for group in groups[state.group :]:
                tick = time.perf_counter()
                loss, tokens = _optimizer_step(run, [[examples[i] for i in b] for b in group], config)
                if run.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - tick
                state.step += 1
                state.group += 1
                state.real_tokens += tokens
                state.train_seconds += seconds
                rate = state.real_tokens / max(state.train_seconds, 1e-9)
                state.train_curve.append(
                    {"step": state.step, "loss": loss, "lr": run.scheduler.get_last_lr()[0], "tokens": tokens,
                     "tokens_per_second": tokens / max(seconds, 1e-9)}
                )  # fmt: skip
                bar.set_description(f"train loss {loss:.3f} · {rate:.0f} tok/s")
                bar.advance()
                last = state.step >= run.total_steps
                if last or (config.eval_every and state.step % config.eval_every == 0):
                    best_adapter = _evaluate(run, state, config, best_adapter)
                if checkpoint_dir is not None and state.step % config.checkpoint_every == 0 and not last:
                    ckpt.save_checkpoint(
                        checkpoint_dir, state, _adapter_state(run.model), best_adapter, run.optimizer,
                        run.scheduler,
                    )  # fmt: skip
                if last or state.stopped_early:
                    break
            else:
                state.epoch += 1
                state.group = 0
    return best_adapter


def _optimizer_step(run: _Run, micro_batches: list[list[TokenizedExample]], config: TrainConfig) -> tuple[float, int]:
    """One optimizer step over ``micro_batches``; returns (mean assistant-token loss, real tokens)."""
    import torch

    label_tokens = sum(e.weighted_label_tokens for batch in micro_batches for e in batch)
    divisor = max(label_tokens, 1e-9) if config.loss_normalization == "step" else max(run.mean_step_label_tokens, 1.0)
    total_loss = 0.0
    real_tokens = 0
    for batch in micro_batches:
        tensors = {k: v.to(run.device) for k, v in run.collator(batch).items()}
        loss_sum, _ = token_loss(run.model, tensors)
        (loss_sum / divisor).backward()
        total_loss += loss_sum.item()
        real_tokens += int(tensors["attention_mask"].sum().item())
    if config.max_grad_norm is not None:
        trainable = [p for p in run.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return total_loss / max(label_tokens, 1e-9), real_tokens


def validation_loss(model: Any, examples: list[TokenizedExample], collator: PaddingCollator, batch_size: int) -> float:
    """Mean assistant-token loss over ``examples`` (batched longest first), with the model in eval mode."""
    import torch

    device = next(model.parameters()).device
    ordered = sorted(examples, key=lambda e: -len(e.input_ids))
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ordered), batch_size):
            batch = {k: v.to(device) for k, v in collator(ordered[start : start + batch_size]).items()}
            loss_sum, n = token_loss(model, batch)
            total += loss_sum.item()
            count += n
    model.train(was_training)
    return total / max(count, 1)


def _evaluate(
    run: _Run, state: ckpt.LoopState, config: TrainConfig, best_adapter: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Validation loss now; keep a copy of the adapter when it is the best so far; count patience."""
    if not run.val_set.examples:
        return None  # nothing to select on: the final adapter is saved
    loss = validation_loss(run.model, run.val_set.examples, run.collator, config.batch_size)
    state.val_curve.append({"step": state.step, "loss": loss})
    if state.best_val is None or loss < state.best_val:
        state.best_val, state.best_step, state.evals_since_best = loss, state.step, 0
        return _adapter_state(run.model)
    state.evals_since_best += 1
    patience = config.early_stopping_patience
    if patience is not None and state.evals_since_best >= patience:
        state.stopped_early = True
    return best_adapter


def _adapter_state(model: Any) -> dict[str, Any]:
    """A CPU copy of the trained weights: the LoRA adapter, or every trainable parameter of a full fine-tune."""
    from peft import PeftModel, get_peft_model_state_dict

    if isinstance(model, PeftModel):
        state = get_peft_model_state_dict(model)
    else:  # named_parameters lists tied weights once, so the copy can be written with safetensors
        state = {name: p for name, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _load_adapter(model: Any, adapter: dict[str, Any]) -> None:
    from peft import PeftModel, set_peft_model_state_dict

    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, adapter)
        return
    missing = set(adapter) - {name for name, _ in model.named_parameters()}
    if missing:
        raise ckpt.CheckpointError(f"saved weights do not match the model: {sorted(missing)[:3]}")
    model.load_state_dict(adapter, strict=False)


# ---------------------------------------------------------------------------------------------- result


def _result(run: _Run, state: ckpt.LoopState, config: TrainConfig, seconds: float) -> TrainResult:
    import torch

    losses = [point["loss"] for point in state.train_curve[-LAST_N_STEPS:]]
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in run.model.parameters())
    cuda = run.device.type == "cuda"
    return TrainResult(
        train_loss=sum(losses) / max(len(losses), 1),
        val_loss=state.best_val,
        best_step=state.best_step if state.best_val is not None else state.step,
        steps=state.step,
        epochs_done=round(state.step / run.steps_per_epoch, 4),
        real_tokens=state.real_tokens,
        tokens_per_second=state.real_tokens / max(state.train_seconds, 1e-9),
        seconds=seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        num_train=len(run.train_set.examples),
        num_val=len(run.val_set.examples),
        dropped_train=dict(run.train_set.dropped),
        dropped_val=dict(run.val_set.dropped),
        truncated_train=run.train_set.truncated,
        truncated_val=run.val_set.truncated,
        trainable_params=trainable,
        total_params=total,
        target_modules=run.target_modules,
        device=str(run.device),
        dtype=str(run.dtype).removeprefix("torch."),
        stopped_early=state.stopped_early,
        resumed_from_step=state.resumed_from_step,
        peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        extra={"train_seconds": state.train_seconds, "total_steps": run.total_steps},
    )
