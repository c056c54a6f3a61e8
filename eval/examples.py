"""What is evaluated: eval examples (a prompt conversation and its reference answer) and the task config.

An :class:`EvalExample` holds the conversation *without* its final assistant answer; the answer is the
reference. The label set is a property of the :class:`EvalTask`, not of an example, so every system is scored
against the same set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.ids import canonical_json, sha256_text
from schemas.records import Record, Role

_ROLES = {role.value for role in Role}


class TaskKind(StrEnum):
    CLASSIFICATION = "classification"  # the answer is one label of a closed set
    EXACT_MATCH = "exact_match"  # the answer is a short string compared after normalisation
    EXTRACTION = "extraction"  # the answer is a JSON object; scored field by field
    FREE_FORM = "free_form"  # the answer is free text; scored by similarity to the reference (chrF, ROUGE-L)


#: Kinds whose metrics, prompts and gate are implemented.
SUPPORTED_KINDS = (TaskKind.CLASSIFICATION, TaskKind.EXACT_MATCH, TaskKind.EXTRACTION, TaskKind.FREE_FORM)

#: The per-example score the gate compares, per kind (free_form: see EvalTask.free_form_metric).
GATE_METRICS = {
    TaskKind.CLASSIFICATION: "accuracy",
    TaskKind.EXACT_MATCH: "exact_match",
    TaskKind.EXTRACTION: "field_accuracy",
}


class EvalExample(BaseModel):
    """One eval item: the prompt conversation (no final assistant turn) and the reference answer."""

    model_config = ConfigDict(frozen=True)

    example_index: int = Field(ge=0, description="Position in the eval set; stable key of per-example rows.")
    record_id: str | None = Field(default=None, description="Catalog record the example came from, if any.")
    messages: tuple[dict[str, str], ...] = Field(
        description="The prompt conversation as {role, content} dicts, ending before the answer."
    )
    reference: str = Field(description="The expected answer (the label, for classification).")

    @field_validator("messages")
    @classmethod
    def _check_messages(cls, value: tuple[dict[str, str], ...]) -> tuple[dict[str, str], ...]:
        if not value:
            raise ValueError("an eval example needs at least one prompt message")
        for message in value:
            if set(message) != {"role", "content"} or message["role"] not in _ROLES:
                raise ValueError(f"each message must be {{role, content}} with a known role, got {message!r}")
        if value[-1]["role"] == Role.ASSISTANT.value:
            raise ValueError("the prompt must not end with an assistant turn: that turn is the reference")
        return value

    def messages_as_list(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.messages]

    @classmethod
    def from_record(cls, record: Record, example_index: int) -> EvalExample:
        """Split a catalog record into prompt and reference: the reference is the record's label if it has
        one, else its final assistant message."""
        msgs = record.messages_as_dicts()
        if not msgs or msgs[-1]["role"] != Role.ASSISTANT.value:
            raise ValueError(f"record {record.record_id} has no final assistant answer to use as reference")
        reference = record.label if record.label is not None else msgs[-1]["content"]
        return cls(
            example_index=example_index,
            record_id=record.record_id,
            messages=tuple(msgs[:-1]),
            reference=reference,
        )


class EvalTask(BaseModel):
    """How answers are produced and scored."""

    kind: TaskKind = Field(description="classification | exact_match | extraction | free_form.")
    labels: list[str] = Field(
        default_factory=list, description="The closed label set (classification only), in display order."
    )
    fields: list[str] = Field(
        default_factory=list,
        description="Extraction only: the JSON fields scored (and named in the base-model instruction); "
        "default: every key of the references, in order of first appearance.",
    )
    free_form_metric: Literal["chrf", "rouge_l"] = Field(
        default="chrf", description="Free-form only: the per-example score the gate compares."
    )
    instruction: str | None = Field(
        default=None,
        description="Task instruction for the base-model prompts; a generic one is written when absent.",
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Generation budget; by default sized from the longest label."
    )

    @model_validator(mode="after")
    def _check(self) -> EvalTask:
        if self.kind not in SUPPORTED_KINDS:
            raise ValueError(
                f"task kind {self.kind.value!r} is reserved but not implemented yet; "
                f"use one of {', '.join(k.value for k in SUPPORTED_KINDS)}"
            )
        if self.kind is TaskKind.CLASSIFICATION:
            if not self.labels:
                raise ValueError("a classification task needs its label set in `labels`")
            from eval.metrics import normalize_answer  # local: metrics imports nothing from here

            normalized = [normalize_answer(label) for label in self.labels]
            clashes = sorted({n for n in normalized if normalized.count(n) > 1})
            if clashes:
                raise ValueError(f"labels that are equal after normalisation: {clashes}")
            if any(not n for n in normalized):
                raise ValueError("a label is empty after normalisation")
        elif self.labels:
            raise ValueError(f"`labels` is only meaningful for classification, not {self.kind.value}")
        if self.fields and self.kind is not TaskKind.EXTRACTION:
            raise ValueError(f"`fields` is only meaningful for extraction, not {self.kind.value}")
        if len(set(self.fields)) != len(self.fields):
            raise ValueError("`fields` repeats a name")
        return self

    @property
    def metric(self) -> str:
        """Name of the per-example score the gate compares."""
        return GATE_METRICS.get(self.kind, self.free_form_metric)

    @property
    def graded(self) -> bool:
        """True when per-example scores lie in [0, 1] rather than right/wrong."""
        return self.kind in (TaskKind.EXTRACTION, TaskKind.FREE_FORM)

    def with_fields_from(self, examples: Sequence[EvalExample]) -> EvalTask:
        """For extraction without declared fields: the same task naming every reference key (first seen first)."""
        if self.kind is not TaskKind.EXTRACTION or self.fields:
            return self
        from eval.metrics import reference_object

        names: dict[str, None] = {}
        for e in examples:
            names.update(dict.fromkeys(reference_object(e.reference)))
        return self.model_copy(update={"fields": list(names)})

    def score(self, prediction: str, reference: str) -> float:
        """The per-example score in [0, 1] under :attr:`metric` (1.0 = right for the binary kinds)."""
        from eval.metrics import chrf, exact_match, field_accuracy, rouge_l

        if self.kind is TaskKind.EXTRACTION:
            return field_accuracy(prediction, reference, self.fields or None)
        if self.kind is TaskKind.FREE_FORM:
            return chrf(prediction, reference) if self.free_form_metric == "chrf" else rouge_l(prediction, reference)
        return 1.0 if exact_match(prediction, reference) else 0.0

    def correct(self, prediction: str, reference: str) -> bool:
        """Fully right: the normalised answer equals the reference (extraction: valid JSON, every field right)."""
        from eval.metrics import exact_match, field_accuracy, parse_json_object

        if self.kind is TaskKind.EXTRACTION:
            valid = parse_json_object(prediction) is not None
            return valid and field_accuracy(prediction, reference, self.fields or None) == 1.0
        return exact_match(prediction, reference)

    def metrics(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
        """Every metric reported for one system on this task."""
        from eval.metrics import extraction_metrics, free_form_metrics, system_metrics

        if self.kind is TaskKind.EXTRACTION:
            return extraction_metrics(predictions, references, self.fields or None)
        if self.kind is TaskKind.FREE_FORM:
            return free_form_metrics(predictions, references)
        return system_metrics(predictions, references, self.labels if self.has_labels else None)

    @property
    def has_labels(self) -> bool:
        return self.kind is TaskKind.CLASSIFICATION

    def check_examples(self, examples: Sequence[EvalExample]) -> None:
        """Refuse an eval set whose references fall outside the label set or whose indices repeat."""
        if not examples:
            raise ValueError("the eval set is empty")
        indices = [e.example_index for e in examples]
        if len(set(indices)) != len(indices):
            raise ValueError("example_index values must be unique within an eval set")
        if self.has_labels:
            from eval.metrics import normalize_answer

            known = {normalize_answer(label) for label in self.labels}
            outside = sorted({e.reference for e in examples if normalize_answer(e.reference) not in known})
            if outside:
                raise ValueError(f"references outside the label set: {outside[:10]}")
        if self.kind is TaskKind.EXTRACTION:
            from eval.metrics import reference_object

            for e in examples:
                try:
                    reference_object(e.reference)
                except ValueError as exc:
                    raise ValueError(f"example {e.example_index}: {exc}") from None


def eval_set_hash(examples: Iterable[EvalExample]) -> str:
    """sha256 of the canonical JSON of the examples (index, record id, messages, reference), in order."""
    body: list[dict[str, Any]] = [
        {
            "example_index": e.example_index,
            "record_id": e.record_id,
            "messages": [dict(m) for m in e.messages],
            "reference": e.reference,
        }
        for e in examples
    ]
    return sha256_text(canonical_json(body))
