"""The contract between `refinery scan` and its checks: what a check receives and what it returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from curation.exact_dup import DuplicateCluster, KeepRank
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


@dataclass
class CheckOutput:
    findings: list[Finding]
    clusters: list[DuplicateCluster] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckContext:
    """What a check may use besides the records: the catalog (for caches such as stored signatures) and its
    validated configuration (None for checks without one)."""

    catalog: Catalog | None = None
    config: BaseModel | None = None


CheckFn = Callable[[Sequence[ScanRecord], CheckContext], CheckOutput]
