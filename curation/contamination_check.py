"""Contamination: training records that nearly duplicate a registered eval item or a frozen snapshot member.

Two sets are compared, never a set with itself: the *query* records (the training records, or a new batch)
and the *reference* records (the eval items of every registered eval set, or the members of a snapshot).
Candidates come from a cross band join (:func:`cross_candidate_pairs`: a query and a reference text sharing
all rows of one LSH band), are pre-filtered by their MinHash estimate like ``near_dup``'s, and every reported
match is verified by its exact Jaccard similarity on the shingle sets, so none is below the threshold.
Signatures come from :mod:`curation.minhash_store` under the same parameter set as ``near_dup`` in that
scope, so a record sketched by either check is never sketched again.

The ``near_dup_eval`` check: one finding per training record; score = the best exact Jaccard to any eval item
(0.0 when none reaches the threshold); flagged when one does; the reason and details name the best eval item
(ties: smallest eval record id, then eval set name). A training record that *is* an eval item (same content,
so the same record id) matches itself with similarity 1.0 and is flagged. Nothing is clustered or removed
here: the finding says which eval item leaked, and a reviewer or a snapshot policy decides. Every verified
match is also a :class:`ContaminationHit` (method ``minhash``, overlap = the exact Jaccard), so the
``contamination`` view lists these beside the n-gram check's hits.

**Templates.** Texts are compared on their content (``strip_templates``, on by default): the prompt template of
the training records and the one of each eval set (:func:`curation.prompt_templates.find_templates`, shared with
the ``contamination`` check) are stripped from every text that has them, on both sides, before sketching and
verification. A shared template otherwise dominates the shingles of short prompts: banking77 train ingested with
``--template intent`` flagged 5,146 of 9,999 records against its test split registered with the same template
(random queries sharing the template's 12 shingles), and 1 against the test split registered without it (a
verbatim copy of a 10-word query then has Jaccard 6/22); with the templates stripped, 160 either way, including
all 25 training records with the words of a test query (at 1.0). Reasons then say ``prompt content, template
stripped`` and ``details.template_stripped`` is true. Contents are sketched once and stored under their own
signature key, named by the templates (:func:`content_signatures`); texts without a template keep ``near_dup``'s
signatures. :func:`find_matches` strips for :func:`check_against_snapshot` and the snapshot's eval-set check
alike.

Default threshold 0.6, lower than ``near_dup``'s 0.7, because a missed leak costs more than a reviewed
false alarm and eval items are short prompts: with 5-word shingles, one substituted word in the middle of an
``n``-word content gives Jaccard ``(n-9)/(n+1)``, which reaches 0.7 only from 33 words but 0.6 from 24 words.
Contents shorter than the shingle size are a single shingle, so they match only when equal after
normalisation, whatever the threshold. On banking77 (contents of 2-84 words, median 10), 0.6 flags 160
records, 16 of 20 sampled the same query (the 4 others: short questions differing in their last word, "verify
my card" / "verify my identity"); 0.7 flags 77, 0.8 37 (docs/CHECKS.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from curation.check_types import CheckContext, CheckOutput, ContaminationHit, Finding, ScanRecord
from curation.lsh import band_keys, sorted_unique
from curation.minhash import MinHashParams, Sketches, estimate_pairs
from curation.minhash_store import SignatureLookup, signatures_for
from curation.near_dup import NearDupConfig, Scope, match_stats
from curation.near_dup_check import scope_text
from curation.prompt_templates import Templates, content_texts, find_templates, group_templates
from curation.verify import verify_pairs
from schemas.catalog import Catalog
from schemas.ids import canonical_json, sha256_text

CHECK_NAME = "near_dup_eval"
EMPTY_CONTENT = "empty, whitespace or punctuation only, or nothing but the prompt template"


class ContaminationError(Exception):
    """The comparison cannot run (unknown snapshot or batch, bad arguments)."""


class ContaminationConfig(NearDupConfig):
    """Configuration of ``near_dup_eval`` and of :func:`check_against_snapshot`: the near_dup settings (so the
    same stored signatures serve both) with defaults for leaks, plus which eval sets to compare with."""

    threshold: float = Field(0.6, gt=0.0, le=1.0, description="Minimum exact Jaccard similarity of a match.")
    scope: Scope = Field("prompt", description="Text compared: the prompt (eval items are prompts), response, pair.")
    eval_sets: list[str] | None = Field(None, description="Compare only with these eval sets (default: all).")
    strip_templates: bool = Field(
        True,
        description="Compare contents: strip the prompt template shared by most query records, and each reference "
        "group's own (eval set, snapshot split), from the texts of both sides before sketching.",
    )

    def near_dup_config(self) -> NearDupConfig:
        """The same sketch and band parameters as a ``near_dup`` config (hence the same stored signatures)."""
        return NearDupConfig.model_validate(self.model_dump(exclude={"eval_sets", "strip_templates"}))


@dataclass(frozen=True)
class Match:
    """A query record whose text nearly duplicates a reference record (verified exact Jaccard)."""

    record_id: str  # the training / new-batch record
    matched_record_id: str  # the eval item or snapshot member
    similarity: float
    matched_in: str  # the eval set name, or the snapshot split of the member
    template_stripped: bool = False  # compared after stripping a prompt template from either text


@dataclass(frozen=True)
class Reference:
    record_id: str
    text: str
    group: str  # eval set or snapshot split


def cross_candidate_pairs(
    query: np.ndarray,
    reference: np.ndarray,
    bands: int,
    rows: int,
    query_active: np.ndarray,
    reference_active: np.ndarray,
    window: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """Unique pairs ``(query row, reference row)`` sharing a band, sorted; never two rows of the same set.

    Per band, the reference keys are sorted once and every query key finds its run of equal keys with two
    ``searchsorted`` calls; each query row takes at most ``window`` partners of a run.
    """
    q_index = np.flatnonzero(query_active).astype(np.int64)
    r_index = np.flatnonzero(reference_active).astype(np.int64)
    empty = np.zeros(0, dtype=np.int64)
    if not len(q_index) or not len(r_index):
        return empty, empty
    q_keys = band_keys(query[q_index], bands, rows)
    r_keys = band_keys(reference[r_index], bands, rows)
    n_ref = len(reference)
    codes = []
    for band in range(bands):
        order = np.argsort(r_keys[:, band], kind="stable")
        sorted_keys = r_keys[order, band]
        lo = np.searchsorted(sorted_keys, q_keys[:, band], side="left")
        hi = np.searchsorted(sorted_keys, q_keys[:, band], side="right")
        counts = np.minimum(hi - lo, window)
        total = int(counts.sum())
        if not total:
            continue
        left = np.repeat(np.arange(len(q_index)), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        right = order[np.repeat(lo, counts) + offsets]
        codes.append(q_index[left] * n_ref + r_index[right])
    if not codes:
        return empty, empty
    merged = sorted_unique(np.concatenate(codes))
    return merged // n_ref, merged % n_ref


def find_matches(
    catalog: Catalog | None,
    query_ids: Sequence[str],
    query_texts: Sequence[str],
    references: Sequence[Reference],
    config: ContaminationConfig,
) -> tuple[list[Match], dict[str, Any], set[str]]:
    """Every verified (query record, reference) pair at or above the threshold, statistics, and the query
    records whose content has no shingles (they match nothing).

    With ``config.strip_templates``, both sides are compared on their content (:mod:`curation.prompt_templates`):
    every text is stripped of the template of the query texts and of the template of each reference group (its
    own eval set or split), whichever it has, so a shared template neither makes unrelated prompts match nor
    hides a copy whose other side has no template. Signatures are looked up (or sketched and stored) once per
    distinct record id across both sides (:func:`content_signatures`).
    """
    nd = config.near_dup_config()
    clock = [time.perf_counter()]
    reference_texts = [r.text for r in references]
    templates = Templates()
    if config.strip_templates:
        templates = find_templates(query_texts) | group_templates(reference_texts, [r.group for r in references])
    query_texts, query_stripped = content_texts(query_texts, templates)
    reference_texts, reference_stripped = content_texts(reference_texts, templates)
    texts_by_id = dict(zip(query_ids, zip(query_texts, query_stripped.tolist(), strict=True), strict=True))
    for ref, text, stripped in zip(references, reference_texts, reference_stripped.tolist(), strict=True):
        texts_by_id.setdefault(ref.record_id, (text, stripped))
    ids = sorted(texts_by_id)
    lookup = content_signatures(
        catalog,
        ids,
        [texts_by_id[i][0] for i in ids],
        np.array([texts_by_id[i][1] for i in ids], dtype=bool),
        nd.minhash_params(),
        config.scope,
        templates,
    )
    position = {rid: i for i, rid in enumerate(ids)}
    q_rows = np.array([position[r] for r in query_ids], dtype=np.int64)
    r_rows = np.array([position[r.record_id] for r in references], dtype=np.int64)
    sig, n_sh = lookup.sketches.signatures, lookup.sketches.n_shingles
    query = Sketches(sig[q_rows], n_sh[q_rows])
    reference = Sketches(sig[r_rows], n_sh[r_rows])
    clock.append(time.perf_counter())

    bands, rows = nd.band_params()
    left, right = cross_candidate_pairs(
        query.signatures,
        reference.signatures,
        bands,
        rows,
        query.n_shingles > 0,
        reference.n_shingles > 0,
        config.bucket_window,
    )
    n_candidates = len(left)
    n_query = len(query_ids)
    if config.prefilter_sigmas is not None and n_candidates:
        stacked = np.concatenate([query.signatures, reference.signatures])
        margin = config.prefilter_sigmas * math.sqrt(config.threshold * (1 - config.threshold) / config.num_perm)
        keep = estimate_pairs(stacked, left, right + n_query) >= config.threshold - margin
        left, right = left[keep], right[keep]
    clock.append(time.perf_counter())
    all_texts = [*query_texts, *reference_texts]
    good_left, good_right, similarity, _ = verify_pairs(
        all_texts, left, right + n_query, config.threshold, config.ngram
    )
    clock.append(time.perf_counter())
    stripped = np.concatenate([query_stripped, reference_stripped])
    matches = [
        Match(
            query_ids[i],
            references[j - n_query].record_id,
            s,
            references[j - n_query].group,
            bool(stripped[i] or stripped[j]),
        )
        for i, j, s in zip(good_left.tolist(), good_right.tolist(), similarity.tolist(), strict=True)
    ]
    matches.sort(key=lambda m: (m.record_id, -m.similarity, m.matched_record_id, m.matched_in))
    stats = {
        **match_stats(config, bands, rows, n_candidates, len(left), len(matches)),
        "empty_texts": int((query.n_shingles == 0).sum()),
        "template_words": list(templates.words),
        "templated_records": int(query_stripped.sum()),
        "templated_references": int(reference_stripped.sum()),
        "sketched": lookup.sketched,
        "signatures_reused": lookup.reused,
        "stage_seconds": dict(zip(("sketch", "candidates", "verify"), np.diff(clock).round(3).tolist(), strict=True)),
    }
    empty = {query_ids[i] for i in np.flatnonzero(query.n_shingles == 0).tolist()}
    return matches, stats, empty


def content_signatures(
    catalog: Catalog | None,
    record_ids: Sequence[str],
    texts: Sequence[str],
    stripped: np.ndarray,
    params: MinHashParams,
    scope: Scope,
    templates: Templates,
) -> SignatureLookup:
    """Signatures of the records' contents (``texts``; ``stripped[i]``: a template was cut from record ``i``).

    A record left whole is sketched under the plain ``scope`` key, so it shares its stored signature with
    ``near_dup``; a stripped record's content is a function of its text and the templates, so it is stored
    under a key naming both (``"<scope>:content:<templates digest>"``) and reused while the templates stay.
    """
    signatures = np.zeros((len(record_ids), params.num_perm), dtype=np.uint32)
    n_shingles = np.zeros(len(record_ids), dtype=np.int64)
    sketched = reused = 0
    for rows, key in ((np.flatnonzero(~stripped), scope), (np.flatnonzero(stripped), content_key(scope, templates))):
        if not len(rows):
            continue
        chosen = rows.tolist()
        part = signatures_for(catalog, [record_ids[i] for i in chosen], [texts[i] for i in chosen], params, key)
        signatures[rows], n_shingles[rows] = part.sketches.signatures, part.sketches.n_shingles
        sketched, reused = sketched + part.sketched, reused + part.reused
    return SignatureLookup(Sketches(signatures, n_shingles), sketched, reused)


def content_key(scope: Scope, templates: Templates) -> str:
    """The signature scope key of contents stripped of ``templates``."""
    return f"{scope}:content:{templates.digest()}"


def best_matches(matches: Sequence[Match]) -> dict[str, Match]:
    """The best match of each query record: highest similarity, then smallest matched id, then group."""
    best: dict[str, Match] = {}
    for m in matches:  # sorted by find_matches: the first per record is the best
        best.setdefault(m.record_id, m)
    return best


def load_eval_items(catalog: Catalog, scope: Scope, eval_sets: Sequence[str] | None = None) -> list[Reference]:
    """The registered eval items (one per eval set and record), in (eval set, record id) order."""
    rows = catalog.query("SELECT eval_set, record_id, prompt, response FROM eval_items ORDER BY eval_set, record_id")
    wanted = None if eval_sets is None else set(eval_sets)
    return [
        Reference(r["record_id"], _text(r["prompt"], r["response"], scope), str(r["eval_set"]))
        for r in rows
        if wanted is None or r["eval_set"] in wanted
    ]


def eval_items_hash(catalog: Catalog) -> str:
    """Names the registered eval items, so a scan that compares with them is redone when they change."""
    rows = catalog.query("SELECT eval_set, record_id FROM eval_items ORDER BY eval_set, record_id")
    return sha256_text(canonical_json([[r["eval_set"], r["record_id"]] for r in rows]))


def _text(prompt: str, response: str, scope: Scope) -> str:
    if scope == "prompt":
        return prompt
    if scope == "response":
        return response
    return f"{prompt}\n{response}"


def check_near_dup_eval(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    """The ``near_dup_eval`` scan check (see the module docstring)."""
    config = ctx.config if isinstance(ctx.config, ContaminationConfig) else ContaminationConfig()
    if ctx.catalog is None:
        raise ContaminationError("near_dup_eval needs the catalog (the eval sets are registered there)")
    started = time.monotonic()
    references = load_eval_items(ctx.catalog, config.scope, config.eval_sets)
    ids = [r.record_id for r in records]
    texts = [scope_text(r, config.scope) for r in records]
    matches, stats, empty = find_matches(ctx.catalog, ids, texts, references, config)
    best = best_matches(matches)
    n_matches: dict[str, int] = {}
    for m in matches:
        n_matches[m.record_id] = n_matches.get(m.record_id, 0) + 1
    hits = [
        ContaminationHit(m.record_id, m.matched_in, m.matched_record_id, round(m.similarity, 6), "minhash")
        for m in matches
    ]
    findings = []
    for rid in ids:
        match = best.get(rid)
        if match is None:
            skipped = {"scope": config.scope, "skipped": f"no shingles: {EMPTY_CONTENT}"}
            findings.append(Finding(rid, 0.0, False, None, skipped if rid in empty else None))
            continue
        similarity = round(match.similarity, 6)
        compared = f"{config.scope} content, template stripped" if match.template_stripped else config.scope
        reason = (
            f"near duplicate of eval item {match.matched_record_id} in eval set {match.matched_in!r} "
            f"(Jaccard {match.similarity:.3f}, {compared})"
        )
        details: dict[str, object] = {
            "eval_set": match.matched_in,
            "eval_record_id": match.matched_record_id,
            "similarity": similarity,
            "scope": config.scope,
            "template_stripped": match.template_stripped,
            "eval_matches": n_matches[rid],
        }
        findings.append(Finding(rid, match.similarity, True, reason, details))
    summary = {
        "contaminated": len(best),
        "eval_sets": len({r.group for r in references}),
        "eval_items": len(references),
        **stats,
        "seconds": round(time.monotonic() - started, 3),
    }
    return CheckOutput(findings, [], summary, contamination=hits)


def check_against_snapshot(
    catalog: Catalog,
    snapshot_id: str,
    record_ids: Sequence[str] | None = None,
    batch_id: str | None = None,
    config: ContaminationConfig | None = None,
) -> list[Match]:
    """Records (given, or those of ``batch_id``) that nearly duplicate a member of the frozen snapshot.

    Returns every verified match (``matched_in`` is the member's split), sorted by record id, then best
    similarity first. A record that is itself a member matches itself with similarity 1.0.
    """
    config = config or ContaminationConfig(scope="pair")
    if (record_ids is None) == (batch_id is None):
        raise ContaminationError("give either record_ids or batch_id")
    if catalog.scalar("SELECT count(*) FROM snapshots WHERE snapshot_id = ?", [snapshot_id]) == 0:
        raise ContaminationError(f"unknown snapshot {snapshot_id!r}")
    if batch_id is not None:
        if catalog.scalar("SELECT count(*) FROM ingest_batches WHERE batch_id = ?", [batch_id]) == 0:
            raise ContaminationError(f"unknown batch {batch_id!r}")
        rows = catalog.query(
            "SELECT r.record_id, r.prompt, r.response FROM records r "
            "WHERE r.record_id IN (SELECT record_id FROM source_rows WHERE batch_id = ?) ORDER BY r.record_id",
            [batch_id],
        )
    else:
        wanted = sorted(set(record_ids or []))
        rows = catalog.query(
            "SELECT record_id, prompt, response FROM records WHERE list_contains(?, record_id) ORDER BY record_id",
            [wanted],
        )
        missing = sorted(set(wanted) - {r["record_id"] for r in rows})
        if missing:
            raise ContaminationError(f"unknown record(s): {', '.join(missing[:5])}")
    members = catalog.query(
        "SELECT m.record_id, m.split, r.prompt, r.response FROM snapshot_members m JOIN records r USING (record_id) "
        "WHERE m.snapshot_id = ? ORDER BY m.record_id",
        [snapshot_id],
    )
    references = [
        Reference(m["record_id"], _text(m["prompt"], m["response"], config.scope), m["split"]) for m in members
    ]
    ids = [r["record_id"] for r in rows]
    texts = [_text(r["prompt"], r["response"], config.scope) for r in rows]
    matches, _, _ = find_matches(catalog, ids, texts, references, config)
    return matches
