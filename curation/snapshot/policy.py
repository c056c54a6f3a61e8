"""What goes into a snapshot and how it is split: :class:`SnapshotPolicy` (every rule is one of its fields).

Which records (the default policy):

- candidates are the records with a training source row (an edited version enters only through its
  original's 'edit' decision, in its original's place);
- out, in this order of precedence: forgotten records (``refinery forget``, and every version derived from
  them), records that are also registered eval items, records whose latest review decision is 'reject',
  removed (non-kept) members of the clusters of ``exclude_duplicates`` (``exact``, ``near_dup``), and records
  flagged by a *blocking* check (``blocking_checks``: empty_response, pii, near_dup_eval, contamination,
  inconsistency) or scoring at or above a configured threshold, unless a human approved (or edited) them;
- a human approval of a removed *near*-duplicate restores it (the reviewer judged it distinct); an exact
  duplicate stays out whatever the decision, since its kept member carries the same normalised text;
- every other check (exact_prompt, outlier, length, semantic_dup, repetitive, ...) is informative: its flags
  send records to review but do not hold them back by themselves.

The default lists come from the checks' specs (``blocks_snapshot``, ``removes_duplicates``, ``groups_splits``:
:mod:`curation.checks.registry`), in registry order: a snapshot's id hashes its policy.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from curation.checks.registry import BLOCKING_CHECKS, DUPLICATE_CHECKS, SPLIT_GROUP_CHECKS
from schemas.errors import InputError

SPLITS = ("train", "validation", "test")


class SnapshotError(InputError):
    """A snapshot cannot be made or loaded."""


class SnapshotPolicy(BaseModel):
    """What goes into a snapshot and how it is split."""

    train_fraction: float = Field(0.8, gt=0, le=1, description="Share of records in the train split.")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="Share of records in validation.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of records in test.")
    seed: int = Field(0, description="Changes every split assignment; keep it fixed across versions.")
    exclude_duplicates: list[str] = Field(
        default_factory=lambda: list(DUPLICATE_CHECKS),
        description="Duplicate checks whose removed (non-kept) members are left out.",
    )
    group_by: list[str] = Field(
        default_factory=lambda: list(SPLIT_GROUP_CHECKS),
        description="Duplicate checks whose clusters must stay within one split.",
    )
    blocking_checks: list[str] = Field(
        default_factory=lambda: list(BLOCKING_CHECKS),
        description="Checks whose flag holds a record back unless a human approved it.",
    )
    score_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="check -> score: a finding at or above it holds the record back too (flagged or not).",
    )
    approval_restores_near_duplicates: bool = Field(
        True, description="A human approval brings back a removed near-duplicate (never an exact duplicate)."
    )
    stratify: bool = Field(True, description="Deal groups to splits per label (when records carry labels).")
    contamination_threshold: float = Field(0.6, gt=0, le=1, description="Eval-set check: minimum Jaccard.")
    contamination_scope: Literal["prompt", "response", "pair"] = Field(
        "prompt", description="Eval-set check: the text compared."
    )

    @field_validator("group_by", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SnapshotPolicy:
        total = self.train_fraction + self.validation_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self

    def fractions(self) -> dict[str, float]:
        return {"train": self.train_fraction, "validation": self.validation_fraction, "test": self.test_fraction}
