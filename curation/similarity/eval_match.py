"""The eval-item matcher: which records of one set nearly duplicate a record of another, never a set with itself.

The *query* records (training records, or a new batch) are compared with the *reference* records (the eval items
of the registered eval sets, or the members of a snapshot). Candidates come from a cross band join
(:func:`cross_candidate_pairs`: a query and a reference text sharing all rows of one LSH band), are pre-filtered by
their MinHash estimate like ``near_dup``'s, and every reported match is verified by its exact Jaccard similarity
on the shingle sets, so none is below the threshold. Signatures come from :mod:`curation.similarity.minhash_store`
under the same parameter set as ``near_dup`` in that scope, so a record sketched by either is never sketched again.
Callers that only read (a snapshot) ask for ``store=False``: stored signatures are used, new ones are not written.

**Templates.** Texts are compared on their content (``strip_templates``, on by default): the prompt template of
the query records and the one of each reference group (:func:`curation.similarity.template_strip.find_templates`,
shared with the ``contamination`` check) are stripped from every text that has them, on both sides, before
sketching and verification. A shared template otherwise dominates the shingles of short prompts: banking77 train
ingested with ``--template intent`` flagged 5,146 of 9,999 records against its test split registered with the same
template (random queries sharing the template's 12 shingles), and 1 against the test split registered without it
(a verbatim copy of a 10-word query then has Jaccard 6/22); with the templates stripped, 160 either way, including
all 25 training records with the words of a test query (at 1.0). Contents are sketched once and stored under their
own signature key, named by the templates (:func:`content_signatures`); texts without a template keep
``near_dup``'s signatures.

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

from curation.similarity.jaccard import verify_pairs
from curation.similarity.lsh import band_keys, sorted_unique
from curation.similarity.minhash import MinHashParams, Sketches, estimate_pairs
from curation.similarity.minhash_store import SignatureLookup, signatures_for
from curation.similarity.near_dup import NearDupConfig, Scope, match_stats, scope_text
from curation.similarity.template_strip import Templates, content_texts, find_templates, group_templates
from schemas.catalog import Catalog
from schemas.errors import InputError
from schemas.ids import canonical_json, sha256_text


class ContaminationError(InputError):
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
    store: bool = True,
) -> tuple[list[Match], dict[str, Any], set[str]]:
    """Every verified (query record, reference) pair at or above the threshold, statistics, and the query
    records whose content has no shingles (they match nothing).

    With ``config.strip_templates``, both sides are compared on their content
    (:mod:`curation.similarity.template_strip`): every text is stripped of the template of the query texts and of the
    template of each reference group (its own eval set or split), whichever it has, so a shared template neither makes
    unrelated prompts match nor hides a copy whose other side has no template. Signatures are looked up (or sketched and
    stored) once per distinct record id across both sides (:func:`content_signatures`); with ``store=False`` new ones
    are not written to the catalog.
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
        store,
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
    store: bool = True,
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
        part = signatures_for(
            catalog, [record_ids[i] for i in chosen], [texts[i] for i in chosen], params, key, store=store
        )
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
        Reference(r["record_id"], scope_text(r["prompt"], r["response"], scope), str(r["eval_set"]))
        for r in rows
        if wanted is None or r["eval_set"] in wanted
    ]


def eval_items_hash(catalog: Catalog) -> str:
    """Names the registered eval items, so a scan that compares with them is redone when they change."""
    rows = catalog.query("SELECT eval_set, record_id FROM eval_items ORDER BY eval_set, record_id")
    return sha256_text(canonical_json([[r["eval_set"], r["record_id"]] for r in rows]))
