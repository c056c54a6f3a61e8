"""Run an eval: every system on the same examples, per-example rows, metrics, timings and the gate verdict.

Systems: "adapter" (base + peft adapter, the example's own prompt), "base_zero_shot" (instruction + label
set or field names), "base_few_shot" (instruction + k solved training examples as prior chat turns), for
classification "base_label_ranking" (the label with the highest log-likelihood under the zero-shot prompt:
always an answer from the set, the fairest zero-shot baseline for a small model) and, when another adapter is
promoted, "champion" (that adapter, loaded beside the challenger on the same base). The base model is loaded
once; base systems run inside peft's ``disable_adapter()`` so they really see no adapter weights.

After the systems, the general-capability regression check (eval/general.py) runs when a general set is
given, and the gate (eval/gate.py) decides with every piece of evidence.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from eval.baselines import adapter_messages, few_shot_messages, select_shots, zero_shot_messages
from eval.examples import EvalExample, EvalTask, TaskKind, eval_set_hash
from eval.gate import GateThresholds, GateVerdict, RegressionCheck, decide
from eval.general import GeneralConfig, GeneralSet, regression_check, skipped
from eval.generation import Model, Tokenizer, generate_greedy, load_model, render_prompts
from eval.label_ranking import CONTENT_FREE_INPUTS, label_loglikelihood_ranking
from eval.loss import reference_losses
from schemas.compute import torch_threads

ADAPTER = "adapter"
BASE_ZERO_SHOT = "base_zero_shot"
BASE_FEW_SHOT = "base_few_shot"
BASE_LABEL_RANKING = "base_label_ranking"
CHAMPION = "champion"
ALL_SYSTEMS = (ADAPTER, BASE_ZERO_SHOT, BASE_FEW_SHOT, BASE_LABEL_RANKING, CHAMPION)
#: peft adapter names inside the one loaded model.
_CHALLENGER_NAME = "default"
_CHAMPION_NAME = "champion"


class EvalConfig(BaseModel):
    """How an eval run is carried out (the task says what is scored)."""

    task: EvalTask | None = Field(
        default=None,
        description="The task, declared (kind, labels, fields, instruction, ...); default: inferred from the data "
        "(classification when the records carry labels, else exact match).",
    )
    systems: list[str] = Field(
        default_factory=lambda: list(ALL_SYSTEMS),
        description="Systems to run; the adapter and at least one baseline are required for a verdict. "
        "base_label_ranking is skipped for tasks without a label set, champion when no other adapter is promoted.",
    )
    few_shot_k: int | None = Field(
        default=None,
        ge=0,
        description="Shots for base_few_shot; default: one per label up to 8 (classification), else 8.",
    )
    seed: int = Field(default=0, description="Seed of the shot draw (and of the bootstrap, via thresholds).")
    batch_size: int = Field(default=16, ge=1, description="Conversations per generate() call.")
    ranking_batch_size: int = Field(default=8, ge=1, description="Prompts per label-ranking pass.")
    ranking_calibration: Literal["contextual", "none"] = Field(
        default="contextual",
        description="base_label_ranking scores: contextual (Zhao et al. 2021: each label's log-likelihood minus "
        "the log of its mean probability, normalised over the labels, under the same prompt with the dialogue "
        f"replaced by each of {list(CONTENT_FREE_INPUTS)}) or none (raw log-likelihood). On banking77 (308 test "
        "queries, SmolLM2-135M) raw ranking was right 2.6% of the time, calibrated 14.3%. Part of the eval id.",
    )
    stop_outside_labels: bool = Field(
        default=True,
        description="Classification: stop generating an answer once it can no longer name a label (its score cannot "
        "change; the stored prediction is the text up to the stop). Prose answers of prompted baselines otherwise "
        "run to max_new_tokens: measured in docs/EVAL.md.",
    )
    contamination: Literal["fail", "exclude"] = Field(
        default="fail",
        description="Eval examples that overlap the training data: fail (the gate fails while any is in the eval "
        "set) or exclude (they are dropped before scoring, listed in the report, and the verdict rests on the "
        "clean rest: a decontaminated eval).",
    )
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch CPU threads during the run (restored after); None = torch's default (all cores). "
        "Changes no result (not part of the eval id); on a busy shared machine 1 thread is often faster.",
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Generation budget; default: the task's, else longest label + 4 tokens."
    )
    thresholds: GateThresholds = Field(default_factory=GateThresholds)
    general: GeneralConfig = Field(
        default_factory=GeneralConfig, description="The general-capability regression check (set and budget)."
    )

    @field_validator("systems")
    @classmethod
    def _check_systems(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(ALL_SYSTEMS))
        if unknown:
            raise ValueError(f"unknown systems {unknown}; known: {', '.join(ALL_SYSTEMS)}")
        if ADAPTER not in value or len(set(value)) < 2:
            raise ValueError("systems must include 'adapter' and at least one baseline")
        return list(dict.fromkeys(value))


class SystemResult(BaseModel):
    name: str
    prompts: list[str] = Field(description="Rendered prompt text per example (chat template applied).")
    predictions: list[str]
    correct: list[bool]
    scores: list[float] = Field(description="Per-example score under the task's gate metric, in [0, 1].")
    metrics: dict[str, float]
    seconds: float
    examples_per_s: float


class EvalRow(BaseModel):
    """One row of per-example results (the eval_results table)."""

    system: str
    example_index: int
    record_id: str | None
    prompt: str
    prediction: str
    reference: str
    correct: bool
    score: float


class Champion(BaseModel):
    """The currently promoted adapter, evaluated as a baseline (champion / challenger)."""

    adapter_id: str
    path: str


class EvalReport(BaseModel):
    eval_set_hash: str
    task: EvalTask
    config: EvalConfig
    base_path: str
    adapter_path: str
    example_indices: list[int]
    record_ids: list[str | None]
    references: list[str]
    shot_record_ids: list[str | None] = Field(description="Training examples used as few-shot turns.")
    systems: dict[str, SystemResult]
    champion_adapter_id: str | None = None
    verdict: GateVerdict

    def rows(self) -> Iterator[EvalRow]:
        for name, result in self.systems.items():
            for i, index in enumerate(self.example_indices):
                yield EvalRow(
                    system=name,
                    example_index=index,
                    record_id=self.record_ids[i],
                    prompt=result.prompts[i],
                    prediction=result.predictions[i],
                    reference=self.references[i],
                    correct=result.correct[i],
                    score=result.scores[i],
                )

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data: the verdict and its evidence, per-system metrics and timings."""
        v = self.verdict
        return {
            "verdict": v.verdict,
            "metric": v.metric,
            "adapter": v.adapter_score,
            "baselines": v.baselines,
            "strongest_baseline": v.strongest_baseline,
            "diff": v.diff,
            "ci_low": v.ci_low,
            "ci_high": v.ci_high,
            "confidence": v.confidence,
            "p_value": v.p_value,
            "test": v.test,
            "contaminated": v.contaminated,
            "contamination": "contaminated" if v.contaminated else "clean",
            "regression": v.regression.model_dump(mode="json") if v.regression else None,
            "comparisons": {name: c.model_dump(mode="json") for name, c in v.comparisons.items()},
            "champion_adapter_id": self.champion_adapter_id,
            "reason": v.reason,
            "thresholds": v.thresholds.model_dump(),
            "n_examples": len(self.example_indices),
            "eval_set_hash": self.eval_set_hash,
            "task": self.task.model_dump(mode="json"),
            "config": self.config.model_dump(mode="json"),
            "base_path": self.base_path,
            "adapter_path": self.adapter_path,
            "shot_record_ids": self.shot_record_ids,
            "systems": {
                name: {**r.metrics, "seconds": r.seconds, "examples_per_s": r.examples_per_s}
                for name, r in self.systems.items()
            },
        }


def _base_only(model: Model) -> contextlib.AbstractContextManager[Any]:
    """Run the wrapped base model with every adapter layer bypassed."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise TypeError("expected a peft model; base systems must run with the adapter disabled")
    return disable()


def default_max_new_tokens(task: EvalTask, tokenizer: Tokenizer) -> int:
    if task.max_new_tokens is not None:
        return task.max_new_tokens
    if task.has_labels:
        longest = max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in task.labels)
        return longest + 4  # room for the end-of-turn token and a little slack to see over-long answers
    return {TaskKind.EXTRACTION: 128, TaskKind.FREE_FORM: 128}.get(task.kind, 32)


def default_few_shot_k(task: EvalTask) -> int:
    return min(len(task.labels), 8) if task.has_labels else 8


def _conversations(
    name: str, examples: Sequence[EvalExample], shots: Sequence[EvalExample], task: EvalTask
) -> list[list[dict[str, str]]]:
    if name in (ADAPTER, CHAMPION):
        return [adapter_messages(e) for e in examples]
    if name == BASE_FEW_SHOT:
        return [few_shot_messages(e, shots, task) for e in examples]
    return [zero_shot_messages(e, task) for e in examples]  # zero-shot generation and label ranking


def _timed(
    name: str,
    conversations: list[list[dict[str, str]]],
    answer: Callable[[], list[str]],
    tokenizer: Tokenizer,
    references: Sequence[str],
    task: EvalTask,
) -> SystemResult:
    prompts = render_prompts(tokenizer, conversations)
    started = time.perf_counter()
    predictions = answer()
    seconds = time.perf_counter() - started
    pairs = list(zip(predictions, references, strict=True))
    return SystemResult(
        name=name,
        prompts=prompts,
        predictions=predictions,
        correct=[task.correct(p, r) for p, r in pairs],
        scores=[task.score(p, r) for p, r in pairs],
        metrics=task.metrics(predictions, references),
        seconds=seconds,
        examples_per_s=len(predictions) / seconds if seconds > 0 else float("inf"),
    )


def _load_champion(model: Model, champion: Champion) -> None:
    folder = Path(champion.path)
    if not (folder / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"champion {champion.adapter_id}: {folder} has no adapter_model.safetensors")
    model.load_adapter(str(folder), adapter_name=_CHAMPION_NAME, is_trainable=False)


@contextlib.contextmanager
def _running_as(model: Model, name: str) -> Iterator[None]:
    """The adapter under test, the champion adapter, or the base model alone, for the duration of the block."""
    if name == ADAPTER:
        yield
    elif name == CHAMPION:
        model.set_adapter(_CHAMPION_NAME)
        try:
            yield
        finally:
            model.set_adapter(_CHALLENGER_NAME)
    else:
        with _base_only(model):
            yield


def run_eval(
    base_path: Path | str,
    adapter_path: Path | str,
    examples: Sequence[EvalExample],
    task: EvalTask,
    shots_pool: Sequence[EvalExample],
    config: EvalConfig | None = None,
    contaminated: bool = False,
    champion: Champion | None = None,
    general_set: GeneralSet | None = None,
) -> EvalReport:
    """Evaluate the adapter and the baselines on ``examples``; return the report with the verdict.

    ``shots_pool`` is the training split the few-shot examples are drawn from (never the eval set: any shot
    equal to an eval example is excluded). ``contaminated`` (the eval set overlaps training data, as found by
    decontamination) makes the verdict fail whatever the scores. ``champion`` is the promoted adapter on the
    same base, run as the baseline "champion". ``general_set`` (prompts with human reference answers, see
    eval/general.py) enables the general-capability regression check.
    """
    config = config or EvalConfig()
    with torch_threads(config.cpu_threads):  # restored afterwards, also on error
        task = task.with_fields_from(examples)
        task.check_examples(examples)
        systems = [
            s
            for s in config.systems
            if (s != BASE_LABEL_RANKING or task.has_labels) and (s != CHAMPION or champion is not None)
        ]
        if len(systems) < 2:
            raise ValueError("no baseline left to compare with (base_label_ranking needs a label set)")
        references = [e.reference for e in examples]
        model, tokenizer = load_model(base_path, adapter_path)
        if CHAMPION in systems and champion is not None:
            _load_champion(model, champion)
        max_new = config.max_new_tokens or default_max_new_tokens(task, tokenizer)
        k = config.few_shot_k if config.few_shot_k is not None else default_few_shot_k(task)
        shots = select_shots(shots_pool, k, seed=config.seed, task=task, exclude=examples)

        def answer_with(name: str, convs: list[list[dict[str, str]]]) -> Callable[[], list[str]]:
            if name == BASE_LABEL_RANKING:
                return lambda: label_loglikelihood_ranking(
                    model, tokenizer, convs, task.labels, config.ranking_batch_size, config.ranking_calibration
                )
            stop = task.labels if task.has_labels and config.stop_outside_labels else None
            return lambda: generate_greedy(
                model, tokenizer, convs, max_new, config.batch_size, description=name, labels=stop
            )

        results: dict[str, SystemResult] = {}
        for name in systems:
            convs = _conversations(name, examples, shots, task)
            answer = answer_with(name, convs)
            with _running_as(model, name):
                results[name] = _timed(name, convs, answer, tokenizer, references, task)
                if task.kind is TaskKind.FREE_FORM:  # how likely each system finds the references
                    losses = reference_losses(model, tokenizer, convs, references, config.batch_size, f"{name} loss")
                    results[name].metrics["reference_loss"] = losses.mean

        regression = _regression(model, tokenizer, config, general_set)
        verdict = decide(
            results[ADAPTER].scores,
            {name: r.scores for name, r in results.items() if name != ADAPTER},
            config.thresholds,
            contaminated=contaminated,
            metric=task.metric,
            regression=regression,
            baseline_adapters={CHAMPION: champion.adapter_id} if champion is not None and CHAMPION in results else None,
        )
        return EvalReport(
            eval_set_hash=eval_set_hash(examples),
            task=task,
            config=config,
            base_path=str(base_path),
            adapter_path=str(adapter_path),
            example_indices=[e.example_index for e in examples],
            record_ids=[e.record_id for e in examples],
            references=references,
            shot_record_ids=[s.record_id for s in shots],
            systems=results,
            champion_adapter_id=champion.adapter_id if champion is not None and CHAMPION in results else None,
            verdict=verdict,
        )


def _regression(model: Model, tokenizer: Tokenizer, config: EvalConfig, general: GeneralSet | None) -> RegressionCheck:
    if not config.general.enabled:
        return skipped("disabled in the eval config (general.enabled: false)")
    if general is None:
        return skipped("no general set given")
    return regression_check(
        model, tokenizer, lambda: _base_only(model), general, config.general, config.thresholds.max_regression
    )
