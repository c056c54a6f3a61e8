"""The ``label_issue`` check: labelled records whose label disagrees with their neighbourhood, with the label the
neighbourhood suggests (a likely annotation error: the query of one intent filed under another).

Each labelled record gets a probability for every label, from two views of its prompt embedding:

- its k nearest neighbours (the kNN that ``inconsistency`` and ``semantic_dup`` search too): the cosine-weighted
  share of them carrying each label (the record itself is never its own neighbour);
- a linear classifier that never saw the record: ridge regression of the one-hot labels on the embeddings, fitted
  on the other folds (``folds``, assigned by a hash of the record id), its scores turned into probabilities by a
  softmax at ``temperature``.

``p = knn_weight x neighbours + (1 - knn_weight) x classifier``. The suggested label is the most probable other
label; the score is ``p(suggested) - p(given)`` (0 when the given label is the most probable one), flagged from
``threshold``.

A label carried by fewer than ``min_label_records`` records cannot be judged by its neighbourhood (nothing else
carries it), with one exception: a *near-miss* label, a strict prefix of a frequent label or within
``max_label_edits`` edits of one (``card_arri``, ``card_arival`` beside ``card_arrival``: a truncated or misspelt
answer). Such a record scores 1 and is flagged, the suggestion being the most probable of the frequent labels it
nearly matches. Measured on banking77 with planted noise (benchmarks/bench_label_issues.py, docs/CHECKS.md).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence

import numpy as np
from pydantic import Field

from curation.checks.neighbours import EMBEDDING_NEEDS, EmbeddingCheckConfig, field_vectors, label_of, neighbours
from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, PairFinding, ScanRecord
from curation.similarity.exact import normalize_for_dedup
from curation.similarity.knn import Neighbours

#: Rows of class probabilities computed at a time (memory: block x labels).
_BLOCK = 4096


class LabelIssueConfig(EmbeddingCheckConfig):
    """``label_issue``: labelled records whose label disagrees with their neighbourhood."""

    threshold: float = Field(
        0.35, gt=0.0, le=1.0, description="Flag when p(suggested label) - p(given label) reaches this."
    )
    knn_weight: float = Field(
        0.7, ge=0.0, le=1.0, description="Weight of the neighbours' labels; the rest is the out-of-fold classifier."
    )
    folds: int = Field(5, ge=2, le=20, description="Folds of the out-of-fold ridge classifier.")
    ridge: float = Field(1.0, gt=0.0, description="L2 penalty of the ridge classifier.")
    temperature: float = Field(0.05, gt=0.0, description="Softmax temperature of the classifier's scores.")
    min_labelled: float = Field(
        0.5, ge=0.0, le=1.0, description="Run only when at least this share of the records carries a label."
    )
    max_labels: int = Field(
        1000, ge=2, description="Run only with at most this many distinct labels (else not a classification set)."
    )
    min_label_records: int = Field(
        5, ge=2, description="Records of a label with fewer records than this are not judged (too few to compare)."
    )
    max_label_words: int = Field(
        4, ge=1, description="Without a record label, a single-line response of at most this many words is a label."
    )
    max_label_edits: int = Field(
        2, ge=0, le=5, description="A rare label this many edits (or fewer) from a frequent one is a near miss of it."
    )


def _fold_of(record_id: str, folds: int) -> int:
    return int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:8], "big") % folds


def _ridge_weights(vectors: np.ndarray, y: np.ndarray, fold: np.ndarray, classes: int, penalty: float) -> np.ndarray:
    """Per fold, the ridge weights ((dimension + 1) x classes, the last row the bias) fitted on the other folds."""
    folds = int(fold.max()) + 1
    width = vectors.shape[1] + 1
    gram = np.zeros((folds, width, width))
    cross = np.zeros((folds, classes, width))
    for lo in range(0, len(vectors), _BLOCK):
        x = _with_bias(vectors[lo : lo + _BLOCK]).astype(np.float64)
        for f in np.unique(fold[lo : lo + _BLOCK]).tolist():
            rows = x[fold[lo : lo + _BLOCK] == f]
            gram[f] += rows.T @ rows
            np.add.at(cross[f], y[lo : lo + _BLOCK][fold[lo : lo + _BLOCK] == f], rows)
    eye = penalty * np.eye(width)
    return np.stack(
        [np.linalg.solve(gram.sum(axis=0) - gram[f] + eye, (cross.sum(axis=0) - cross[f]).T) for f in range(folds)]
    )


def _with_bias(vectors: np.ndarray) -> np.ndarray:
    return np.hstack([vectors, np.ones((len(vectors), 1), dtype=vectors.dtype)])


def _probabilities(
    vectors: np.ndarray, fold: np.ndarray, weights: np.ndarray, votes: np.ndarray, config: LabelIssueConfig
) -> np.ndarray:
    """Label probabilities of a block of rows: the out-of-fold classifier's softmax and the neighbours' votes."""
    x = _with_bias(vectors).astype(np.float64)
    scores = np.zeros(votes.shape)
    for f in np.unique(fold).tolist():
        scores[fold == f] = x[fold == f] @ weights[f]
    z = (scores - scores.max(axis=1, keepdims=True)) / config.temperature
    classifier = np.exp(z)
    classifier /= classifier.sum(axis=1, keepdims=True)
    total = votes.sum(axis=1, keepdims=True)
    weight = np.where(total > 0, config.knn_weight, 0.0)  # no labelled neighbour: the classifier alone
    votes = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
    return weight * votes + (1.0 - weight) * classifier


def label_probabilities(
    vectors: np.ndarray, y: np.ndarray, found: Neighbours, ids: Sequence[str], classes: int, config: LabelIssueConfig
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """The label probabilities of the labelled rows (``y >= 0``; ``y`` indexes ``classes`` labels), in blocks.

    Yields (the block's positions among the labelled rows, its probabilities (rows x classes), its neighbours'
    labels (rows x k, -1 where a neighbour has no label or is missing)). ``found`` holds every row's neighbours
    (indices into ``vectors``); ``ids`` are the record ids that assign the folds. With ``knn_weight`` 0 the
    probabilities are the out-of-fold classifier's alone (benchmarks/bench_label_issues.py gives them to cleanlab).
    """
    rows = np.flatnonzero(y >= 0)
    fold = np.array([_fold_of(ids[i], config.folds) for i in rows.tolist()], dtype=np.int64)
    weights = _ridge_weights(vectors[rows], y[rows], fold, classes, config.ridge)
    for lo in range(0, len(rows), _BLOCK):
        block = slice(lo, lo + _BLOCK)
        nbr = found.indices[rows[block]]
        nbr_label = np.where(nbr >= 0, y[np.maximum(nbr, 0)], -1)
        weight = np.where(nbr_label >= 0, np.maximum(found.similarities[rows[block]], 0.0), 0.0)
        votes = np.zeros((len(nbr), classes))
        np.add.at(
            votes, (np.repeat(np.arange(len(nbr)), nbr.shape[1]), np.maximum(nbr_label, 0).ravel()), weight.ravel()
        )
        yield block, _probabilities(vectors[rows[block]], fold[block], weights, votes, config), nbr_label


def edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of ``a`` and ``b``, or ``limit + 1`` once it is known to exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def near_miss_labels(keys: Sequence[str], size: np.ndarray, config: LabelIssueConfig) -> dict[int, list[int]]:
    """rare label -> the frequent labels it nearly matches (a strict prefix of them, or few edits away)."""
    frequent = [c for c in range(len(keys)) if size[c] >= config.min_label_records]
    out: dict[int, list[int]] = {}
    for c in range(len(keys)):
        if size[c] == 0 or size[c] >= config.min_label_records:
            continue
        rare, limit = keys[c], config.max_label_edits
        matches = [f for f in frequent if keys[f].startswith(rare) or edit_distance(rare, keys[f], limit) <= limit]
        if matches:
            out[c] = matches
    return out


def _skip_all(records: Sequence[ScanRecord], why: str, started: float) -> CheckOutput:
    findings = [Finding(r.record_id, 0.0, False, None, {"skipped": why}) for r in records]
    return CheckOutput(findings, summary={"skipped": why, "seconds": round(time.monotonic() - started, 3)})


def check_label_issue(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    """Score = p(suggested label) - p(given label), clipped at 0; flagged at ``threshold`` (module docstring).

    Runs when at least ``min_labelled`` of the records carry a label (``records.label``, else a one-line response of
    at most ``max_label_words`` words, as ``inconsistency`` reads labels) and there are 2 to ``max_labels`` labels;
    otherwise every finding is unflagged with ``details.skipped`` and the summary says why (nothing is embedded).
    Records without a label, or whose label has fewer than ``min_label_records`` records (a label met once cannot
    be told from its neighbours: nothing else carries it), score 0 (``details.skipped``). A flagged record's details
    name the suggested label and both probabilities, and a :class:`PairFinding` names the most similar record
    carrying the suggested label.
    """
    config = ctx.config if isinstance(ctx.config, LabelIssueConfig) else LabelIssueConfig()
    started = time.monotonic()
    labels = [label_of(r, config.max_label_words) for r in records]
    labelled = np.array([label is not None for label in labels])
    keys = sorted({label for label in labels if label is not None})
    shown: dict[str, str] = {}  # a label as people read it (a label given as the response is keyed normalised)
    for rec, label in zip(records, labels, strict=True):
        if label is not None and label not in shown:
            shown[label] = (rec.label or "").strip() or rec.response.strip()
    names = [shown[key] for key in keys]
    if not records or labelled.sum() < max(2, config.min_labelled * len(records)):
        return _skip_all(records, f"fewer than {config.min_labelled:.0%} of the records carry a label", started)
    if not 2 <= len(names) <= config.max_labels:
        return _skip_all(records, f"{len(names)} distinct labels (needs 2 to {config.max_labels})", started)
    index = {key: c for c, key in enumerate(keys)}
    y = np.array([index[label] if label is not None else -1 for label in labels])
    vectors, stats = field_vectors(records, "prompt", ctx, config.model)
    found = neighbours(records, "prompt", ctx, config.model, config.k)
    rows = np.flatnonzero(labelled)
    given = y[rows]
    own = np.zeros(len(rows))
    best = np.zeros(len(rows))
    suggested = np.zeros(len(rows), dtype=np.int64)
    agreeing = np.zeros(len(rows), dtype=np.int64)  # neighbours carrying the suggested label
    counted = np.zeros(len(rows), dtype=np.int64)  # labelled neighbours
    ids = [r.record_id for r in records]
    size = np.bincount(given, minlength=len(names))
    near_miss = near_miss_labels([normalize_for_dedup(name) for name in names], size, config)
    for block, p, nbr_label in label_probabilities(vectors, y, found, ids, len(names), config):
        at = np.arange(len(p))
        own[block] = p[at, given[block]]
        p[at, given[block]] = -1.0
        suggested[block] = p.argmax(axis=1)
        for m in np.flatnonzero(np.isin(given[block], list(near_miss))).tolist():
            candidates = near_miss[int(given[block][m])]  # a near miss: the likeliest of the labels it nearly is
            suggested[block][m] = candidates[int(np.argmax(p[m, candidates]))]
        best[block] = p[at, suggested[block]]
        agreeing[block] = (nbr_label == suggested[block][:, None]).sum(axis=1)
        counted[block] = (nbr_label >= 0).sum(axis=1)
    margin = np.clip(best - own, 0.0, 1.0)
    flagged = (margin >= config.threshold) & (size[given] >= config.min_label_records)
    missed = np.isin(given, list(near_miss))
    flagged[missed], margin[missed] = True, 1.0
    partners = _nearest_with_label(vectors, rows[flagged], suggested[flagged], y)

    findings: list[Finding] = []
    pairs: list[PairFinding] = []
    position = {int(i): n for n, i in enumerate(rows)}
    for i, rec in enumerate(records):
        n = position.get(i)
        if n is None:
            findings.append(Finding(rec.record_id, 0.0, False, None, {"skipped": "no label"}))
            continue
        if size[given[n]] < config.min_label_records and int(given[n]) not in near_miss:
            why = f"label {names[given[n]]!r} has {size[given[n]]} record(s), under {config.min_label_records}"
            findings.append(Finding(rec.record_id, 0.0, False, None, {"skipped": why}))
            continue
        label, other = names[given[n]], names[suggested[n]]
        details = {
            "label": label,
            "suggested_label": other,
            "response_is_label": normalize_for_dedup(rec.response) == normalize_for_dedup(label),
            "label_probability": round(float(own[n]), 6),
            "suggested_probability": round(float(best[n]), 6),
            "neighbours_with_suggested": int(agreeing[n]),
            "neighbours": int(counted[n]),
        }
        if not flagged[n]:
            findings.append(Finding(rec.record_id, round(float(margin[n]), 6), False, None, details))
            continue
        if int(given[n]) in near_miss:
            details["near_miss_of"] = [names[c] for c in near_miss[int(given[n])]]
            reason = (
                f"label {label!r} ({size[given[n]]} record(s)) is a near miss of {other!r} (truncated or misspelt); "
                f"{agreeing[n]} of its {counted[n]} nearest labelled neighbours carry {other!r}"
            )
        else:
            reason = (
                f"label {label!r} disagrees with its neighbourhood: suggested {other!r} (p {best[n]:.2f} vs "
                f"{own[n]:.2f}; {agreeing[n]} of its {counted[n]} nearest labelled neighbours carry it)"
            )
        findings.append(Finding(rec.record_id, round(float(margin[n]), 6), True, reason, details))
        partner = partners.get(i)
        if partner is not None:
            j, similarity = partner
            pairs.append(
                PairFinding(
                    rec.record_id,
                    records[j].record_id,
                    round(float(margin[n]), 6),
                    round(similarity, 6),
                    None,
                    f"{rec.record_id} is labelled {label!r}; the most similar record labelled {other!r} is "
                    f"{records[j].record_id} (cosine {similarity:.3f})",
                    {"label": label, "suggested_label": other},
                )
            )
    summary = {
        "labels": len(names),
        "labelled": len(rows),
        "threshold": config.threshold,
        "embedded": stats.encoded,
        "embeddings_cached": stats.cached,
        "seconds": round(time.monotonic() - started, 3),
    }
    return CheckOutput(findings, summary=summary, pairs=pairs)


def _nearest_with_label(
    vectors: np.ndarray, flagged: np.ndarray, suggested: np.ndarray, y: np.ndarray
) -> dict[int, tuple[int, float]]:
    """record index -> (the most similar other record labelled with its suggested label, cosine)."""
    out: dict[int, tuple[int, float]] = {}
    for label in np.unique(suggested).tolist():
        members = np.flatnonzero(y == label)
        for lo in range(0, int((suggested == label).sum()), 256):  # 256 x members similarities at a time
            queries = flagged[suggested == label][lo : lo + 256]
            sims = vectors[queries] @ vectors[members].T
            best = sims.argmax(axis=1)
            for row, (q, b) in enumerate(zip(queries.tolist(), best.tolist(), strict=True)):
                out[q] = (int(members[b]), float(np.clip(sims[row, b], 0.0, 1.0)))
    return out


SPEC = CheckSpec(
    "label_issue",
    check_label_issue,
    higher_score="another label is more probable than the given one by this margin (its neighbours and an "
    "out-of-fold classifier)",
    config=LabelIssueConfig,
    default=True,
    guide="the label (the answer) disagrees with the labels of similar records; the suggestion is the label they "
    "carry. Edit the response to the suggested label if it is right, approve if the given label is right, reject "
    "a record no label fits.",
    needs=EMBEDDING_NEEDS,
)
