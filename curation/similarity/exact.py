"""Exact-duplicate detection on normalised text, for whole pairs and for prompts alone.

Two records with byte-identical canonical messages are already one record (same id). This check finds the
records that differ only in ways a model would not learn from: case, whitespace and punctuation.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

_SPACE_RE = re.compile(r"\s+")


_ASCII_PUNCTUATION = {ord(ch): " " for ch in map(chr, range(128)) if unicodedata.category(ch).startswith("P")}


def normalize_for_dedup(text: str) -> str:
    """NFKC, casefolded, punctuation removed, whitespace collapsed: the text two duplicates share."""
    if text.isascii():  # the common case, several times faster; the same result as the general path
        return " ".join(text.lower().translate(_ASCII_PUNCTUATION).split())
    else:
        text = unicodedata.normalize("NFKC", text).casefold()
        text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return _SPACE_RE.sub(" ", text).strip()


def dedup_key(*parts: str) -> str:
    """Stable key of the normalised parts (joined with a separator no normalised text contains)."""
    joined = "\x1f".join(normalize_for_dedup(p) for p in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeepRank:
    """Why one member of a cluster is kept: lower sorts first. Fields in order of precedence."""

    review_rank: int  # 0 = approved in review, 1 = undecided (review arrives with a later issue)
    quality_rank: float  # negated quality score; 0.0 while no quality score exists
    first_seen: tuple[str, int, int]  # (batch start time ISO, row, sub_index) of the earliest source row
    record_id: str

    def reason_against(self, other: KeepRank) -> str:
        if self.review_rank != other.review_rank:
            return "approved in review"
        if self.quality_rank != other.quality_rank:
            return "better quality score"
        if self.first_seen != other.first_seen:
            return "earliest ingest"
        return "smallest record id"


@dataclass(frozen=True)
class DuplicateCluster:
    cluster_id: str
    kept: str
    members: tuple[str, ...]  # sorted record ids, kept member included
    keep_reason: str
    similarities: tuple[float, ...] = ()  # per member, similarity to the kept one; empty = all 1.0 (exact)

    def similarity_of(self, record_id: str) -> float:
        if not self.similarities:
            return 1.0
        return self.similarities[self.members.index(record_id)]

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(m for m in self.members if m != self.kept)


def cluster_exact(items: Iterable[tuple[str, str]], ranks: dict[str, KeepRank], prefix: str) -> list[DuplicateCluster]:
    """Group ``(record_id, key)`` pairs by key; return clusters of two or more, each with a kept member.

    The kept member is the one with the smallest :class:`KeepRank`; the result does not depend on input order.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for rid, key in items:
        groups[key].append(rid)
    clusters = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        ordered = sorted(members, key=lambda rid: rank_key(ranks[rid]))
        kept, runner_up = ordered[0], ordered[1]
        clusters.append(
            DuplicateCluster(
                cluster_id=f"{prefix}{key[:16]}",
                kept=kept,
                members=tuple(sorted(members)),
                keep_reason=ranks[kept].reason_against(ranks[runner_up]),
            )
        )
    clusters.sort(key=lambda c: c.cluster_id)
    return clusters


def rank_key(rank: KeepRank) -> tuple[int, float, tuple[str, int, int], str]:
    return (rank.review_rank, rank.quality_rank, rank.first_seen, rank.record_id)
