"""The contract between `refinery scan` and its checks: what a check receives, what it returns, and the
:class:`CheckSpec` that declares everything else about it, next to its code.

The contract, enforced by the runner (:mod:`curation.checks.runner`) on every check's output: exactly one
:class:`Finding` per record; every score a number in [0, 1] where **higher means worse** (what "worse" means
for a check is its spec's ``higher_score``), so a flagged finding never scores 0. A check that breaks it fails
like a check that raises: the scan records the error and goes on with the other checks.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from curation.similarity.exact import DuplicateCluster, KeepRank
from schemas.catalog import Catalog
from schemas.errors import InputError

if TYPE_CHECKING:
    from curation.executors import Executor


class ScanError(InputError):
    """The scan cannot run (unknown checks, bad config, a missing optional dependency, no records)."""


class ContractError(Exception):
    """A check's output breaks the contract (a finding missing or repeated, a score outside [0, 1])."""


@dataclass(frozen=True, slots=True)  # slots: a scan holds one per record (1M at scale)
class ScanRecord:
    record_id: str
    prompt: str
    response: str
    label: str | None
    rank: KeepRank


@dataclass(frozen=True, slots=True)
class Finding:
    record_id: str
    score: float  # in [0, 1], higher = worse (the check's spec says what worse means)
    flagged: bool
    reason: str | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
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
    executor: Executor | None = None  # where its heavy stages may run (None: this process)


CheckFn = Callable[[Sequence[ScanRecord], CheckContext], CheckOutput]


@dataclass(frozen=True)
class Needs:
    """What a check depends on besides the training records: the scan id covers the first two, the third is
    checked when the checks are resolved (before any work), so a missing extra fails the scan at once."""

    eval_sets: bool = False  # reads the registered eval sets: the scan id names them
    embedding_model: bool = False  # embeds with the model its config's ``model`` names: the scan id names it
    modules: tuple[str, ...] = ()  # importable modules it needs ...
    extra: str | None = None  # ... and the pip extra that installs them

    def missing(self) -> list[str]:
        """The needed modules that cannot be imported."""
        return [name for name in self.modules if importlib.util.find_spec(name) is None]


@dataclass(frozen=True)
class CheckSpec:
    """Everything about one check, declared next to its code and registered once (:mod:`curation.checks.registry`):
    the scan, the snapshot policy's defaults, the review guidelines and the scan config schema all read it."""

    name: str  # the name findings are stored and reported under
    run: CheckFn
    higher_score: str  # what a higher score means: the direction of the score, in words
    config: type[BaseModel] | None = None  # its options (``refinery scan --config``); None: it takes none
    default: bool = False  # runs in a scan that names no checks
    blocks_snapshot: bool = False  # a flag holds the record out of snapshots until a human approves it
    removes_duplicates: bool = False  # snapshots leave out the removed (non-kept) members of its clusters
    groups_splits: bool = False  # snapshots keep each of its clusters within one split
    guide: str | None = None  # what a flag means for an annotator (review guidelines)
    needs: Needs = field(default_factory=Needs)
    preset: Mapping[str, Any] = field(default_factory=dict)  # config values its name implies
    rename: Callable[[str, BaseModel], str] | None = None  # the name its results go under, given its config
    # A record's finding depends on that record alone, so the scan may run the check on shards of the records (on
    # the executor) and join the findings in order: how each key of the shards' summaries joins ("sum" of counts,
    # including dicts of counts; "max"; "same": equal in every shard). None: the check needs every record at once.
    shard_summary: Mapping[str, Literal["sum", "max", "same"]] | None = None

    def with_function(self, run: CheckFn) -> CheckSpec:
        """The same spec running another function (tests replace a check's code, never its declaration)."""
        return replace(self, run=run)
