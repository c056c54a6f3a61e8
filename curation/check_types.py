"""The contract between `refinery scan` and its checks: what a check receives and what it returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from curation.similarity.exact import DuplicateCluster, KeepRank
from schemas.catalog import Catalog


@dataclass(frozen=True)
class ScanRecord:
    record_id: str
    prompt: str
    response: str
    label: str | None
    rank: KeepRank


@dataclass(frozen=True)
class Finding:
    record_id: str
    score: float  # direction documented per check
    flagged: bool
    reason: str | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class PairFinding:
    """A finding about two records: ``record_a`` is the flagged one, ``record_b`` the one it is compared with
    (stored in ``finding_pairs``; conflicts appear in the ``conflicts`` view)."""

    record_a: str
    record_b: str
    score: float  # in [0, 1], higher = worse
    prompt_similarity: float | None = None
    response_similarity: float | None = None
    reason: str | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class ContaminationHit:
    """A training record overlapping an item of a registered eval set (stored in ``contamination_hits``)."""

    record_id: str
    eval_set: str
    eval_item: str  # the eval item's record id
    overlap: float  # in [0, 1]
    method: str  # e.g. 'ngram13', 'minhash'
    details: dict[str, Any] | None = None


@dataclass
class CheckOutput:
    findings: list[Finding]
    clusters: list[DuplicateCluster] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    pairs: list[PairFinding] = field(default_factory=list)
    contamination: list[ContaminationHit] = field(default_factory=list)


@dataclass(frozen=True)
class CheckContext:
    """What a check may use besides the records: the catalog (for caches such as stored signatures) and its
    validated configuration (None for checks without one)."""

    catalog: Catalog | None = None
    config: BaseModel | None = None


CheckFn = Callable[[Sequence[ScanRecord], CheckContext], CheckOutput]
