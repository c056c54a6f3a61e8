"""General-capability regression check: does the adapter make the model worse at ordinary requests?

The general set is a JSONL file of prompts (default: MT-Bench's questions, first turn). The base model answers
each prompt greedily once; those answers are the references, cached per (base model, prompts, budget) so
later evals of any adapter on the same base reuse them. The check compares the adapter's mean token loss on
those references with the base model's: a relative rise above ``max_regression`` fails the gate. An adapter
that forgot how to answer in general finds the base model's fluent answers much less likely.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from eval.gate import RegressionCheck
from eval.generation import Model, Tokenizer, generate_greedy
from eval.loss import reference_losses
from schemas.atomic import write_text_atomic
from schemas.ids import canonical_json, sha256_text

#: Keys a general-set line may carry its prompt under, in the order they are tried.
PROMPT_KEYS = ("turns", "prompt", "instruction", "question", "messages")


class GeneralSetError(ValueError):
    """The general set cannot be read (missing file, a line without a prompt)."""


class GeneralConfig(BaseModel):
    """Which general set the regression check uses and how much of it."""

    enabled: bool = Field(default=True, description="False skips the check (the verdict says so).")
    path: str | None = Field(
        default=None, description="JSONL of prompts; default: ../shared/data/mt_bench/question.jsonl when present."
    )
    limit: int = Field(default=40, ge=1, description="Use the first N prompts (keeps the check cheap).")
    max_new_tokens: int = Field(default=128, ge=1, description="Length budget of the base model's reference answers.")
    batch_size: int = Field(default=8, ge=1, description="Prompts per generate() / loss pass.")


def _prompt_of(line: dict[str, Any]) -> str | None:
    for key in PROMPT_KEYS:
        value = line.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if key == "turns" and isinstance(value, list) and value and isinstance(value[0], str):
            return value[0]  # MT-Bench: the first turn
        if key == "messages" and isinstance(value, list):
            users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[0], str):
                return users[0]
    return None


def load_general_prompts(path: Path | str, limit: int) -> list[str]:
    """The first ``limit`` prompts of a JSONL file (``turns[0]``, ``prompt``, ``instruction``, ``question`` or
    the first user message of ``messages``)."""
    file = Path(path)
    if not file.is_file():
        raise GeneralSetError(f"general set {file} does not exist")
    prompts: list[str] = []
    with file.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise GeneralSetError(f"{file}:{number}: not JSON ({exc.msg})") from None
            prompt = _prompt_of(line) if isinstance(line, dict) else None
            if prompt is None:
                raise GeneralSetError(f"{file}:{number}: no prompt under any of {', '.join(PROMPT_KEYS)}")
            prompts.append(prompt)
            if len(prompts) >= limit:
                break
    if not prompts:
        raise GeneralSetError(f"general set {file} has no prompts")
    return prompts


def prompts_hash(prompts: Sequence[str]) -> str:
    return sha256_text(canonical_json(list(prompts)))


def base_references(
    model: Model,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    base_model_id: str,
    max_new_tokens: int,
    batch_size: int,
    cache_dir: Path | None,
) -> list[str]:
    """The base model's greedy answers to ``prompts``, from the cache when (base, prompts, budget) was seen.

    ``model`` must answer as the base model here (the caller disables any adapter).
    """
    key = sha256_text(canonical_json({"base": base_model_id, "prompts": prompts_hash(prompts), "max": max_new_tokens}))
    cached = cache_dir / f"{key[:24]}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        data = json.loads(cached.read_text(encoding="utf-8"))
        if data.get("prompts") == list(prompts):
            return [str(a) for a in data["answers"]]
    convs = [[{"role": "user", "content": p}] for p in prompts]
    answers = generate_greedy(model, tokenizer, convs, max_new_tokens, batch_size, description="general refs")
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        body = {"base_model_id": base_model_id, "max_new_tokens": max_new_tokens, "prompts": list(prompts)}
        write_text_atomic(cached, json.dumps({**body, "answers": answers}, indent=1) + "\n")
    return answers


def skipped(reason: str, general_set: str | None = None) -> RegressionCheck:
    return RegressionCheck(status="skipped", reason=reason, general_set=general_set)


def regression_check(
    model: Model,
    tokenizer: Tokenizer,
    base_only: Callable[[], contextlib.AbstractContextManager[Any]],
    general_set: Path,
    config: GeneralConfig,
    max_regression: float,
    base_model_id: str,
    cache_dir: Path | None = None,
) -> RegressionCheck:
    """Mean token loss of the base model's own answers under the adapter vs under the base model.

    ``model`` runs with the adapter; inside ``base_only()`` it runs as the base model.
    """
    started = time.perf_counter()
    prompts = load_general_prompts(general_set, config.limit)
    convs = [[{"role": "user", "content": p}] for p in prompts]
    with base_only():
        refs = base_references(
            model, tokenizer, prompts, base_model_id, config.max_new_tokens, config.batch_size, cache_dir
        )
        base = reference_losses(model, tokenizer, convs, refs, config.batch_size, "general loss (base)").mean
    adapted = reference_losses(model, tokenizer, convs, refs, config.batch_size, "general loss (adapter)").mean
    change = adapted / base - 1.0 if base > 0 else 0.0
    failed = change > max_regression
    where = f"{len(prompts)} prompts of {general_set.name}"
    reason = (
        f"mean token loss on {where} went from {base:.3f} (base) to {adapted:.3f} (adapter), "
        f"{change:+.1%} {'above' if failed else 'within'} the allowed {max_regression:+.0%}"
    )
    return RegressionCheck(
        status="fail" if failed else "pass",
        reason=reason,
        general_set=str(general_set),
        general_set_hash=prompts_hash(prompts),
        n_prompts=len(prompts),
        max_new_tokens=config.max_new_tokens,
        base_loss=base,
        adapter_loss=adapted,
        relative_change=change,
        max_regression=max_regression,
        seconds=time.perf_counter() - started,
    )
