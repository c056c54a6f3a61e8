"""L1: label-issue detection on banking77 with planted label noise, side by side with cleanlab; the default scan's time.

    .venv/bin/python benchmarks/bench_label_issues.py [--rate 0.1] [--seed 0] [--folds 5] [--mode labels|scan|all]
        [--demo-n 3000] [--fresh]

Mode ``labels`` (the default). Records: banking77 train (9,999 queries, 77 intents) ingested with ``--template
intent`` into a workspace kept in bench-results/label-issues-ws/, so its prompts are embedded once (by the scan's
encoder, the configured backend) and every later run reads them from the cache. Two plantings of label noise, each
on a fresh copy of the clean labels and seeded: ``random`` gives --rate of the records a uniformly random other
intent; ``confusable`` gives them the intent nearest to their own (cosine of the intents' mean prompt embeddings,
computed on the clean labels): the mistake an annotator makes between overlapping intents. A planted record's
response becomes its new label too (the records answer with their label).

Side by side on the same embeddings and the same noisy labels:

- ``label_issue``: the check as the scan runs it (``check_label_issue``, default config; its time includes the kNN);
- ``cleanlab (LogisticRegression)``: ``cleanlab.filter.find_label_issues(labels, pred_probs)`` with its defaults,
  pred_probs out-of-fold from ``sklearn.linear_model.LogisticRegression(max_iter=1000)`` over the embeddings
  (``cross_val_predict``, --folds stratified folds): cleanlab's documented recipe;
- ``cleanlab (ridge, as the check)``: the same call on the out-of-fold probabilities of the check's own classifier
  (its ridge regression, ``knn_weight`` 0): the same classifier for both, so only the rule differs.

Precision, recall and F1 against the planted records; the ratio of the check's figures to cleanlab's
(LogisticRegression); seconds (wall and CPU of this process). A flagged record that was not planted counts against
precision even when banking77's own label is wrong (the clean set has some: docs/CHECKS.md), for every method alike.

Mode ``scan``: the default scan (``run_scan(catalog)``: every default check, the embedding checks included) on a
fresh workspace of banking77 train, with an empty embedding cache: wall and CPU seconds, per-check seconds and flag
counts; then the same on the demo corpus (``refinery.demo_corpus``, --demo-n training rows) with and without the
embedding checks: what they add to `make demo`. ``--fresh`` also starts from an empty ONNX model cache (the export
a fresh machine pays once). Writes bench-results/label_issues.json (and scan_default.json); the last line is the
final figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from dedup_common import RESULTS, machine, require_data, table, write_result

INTENT = {"text": "user", "category": "assistant"}


def ingest_banking77(root: Path) -> Any:
    """The catalog of a workspace at ``root`` holding banking77 train (ingested once)."""
    from curation.ingest import IngestOptions, ingest
    from schemas.catalog import Catalog

    root.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(root / "catalog.duckdb")
    catalog.migrate()
    if not catalog.scalar("SELECT count(*) FROM records"):
        options = IngestOptions(format="csv", mapping=INTENT, template="intent")
        ingest(catalog, [require_data() / "banking77" / "train.csv"], options)
    return catalog


def plant(labels: np.ndarray, vectors: np.ndarray, kind: str, rate: float, seed: int) -> np.ndarray:
    """A noisy copy of ``labels`` (class indices): --rate of them changed, as ``kind`` says (module docstring)."""
    rng = np.random.default_rng(seed)
    classes = int(labels.max()) + 1
    picked = rng.choice(len(labels), int(rate * len(labels)), replace=False)
    noisy = labels.copy()
    if kind == "random":
        noisy[picked] = (labels[picked] + rng.integers(1, classes, len(picked))) % classes
    else:
        centres = np.stack([vectors[labels == c].mean(axis=0) for c in range(classes)])
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        similarity = centres @ centres.T
        np.fill_diagonal(similarity, -np.inf)
        noisy[picked] = similarity.argmax(axis=1)[labels[picked]]
    return noisy


def scores(flagged: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    hits = int((flagged & truth).sum())
    precision = hits / max(int(flagged.sum()), 1)
    recall = hits / max(int(truth.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {
        "flagged": int(flagged.sum()),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
    }


class Timer:
    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_labels(args: argparse.Namespace) -> dict[str, Any]:
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from curation.checks import neighbours as shared
    from curation.checks.label_issue import LabelIssueConfig, check_label_issue, label_probabilities
    from curation.checks.runner import load_training_records
    from curation.checks.spec import CheckContext
    from curation.similarity.knn import knn

    catalog = ingest_banking77(RESULTS / "label-issues-ws")
    records = load_training_records(catalog)
    ctx = CheckContext(catalog)
    with Timer() as embed:
        vectors, stats = shared.field_vectors(records, "prompt", ctx, None)
    print(f"embeddings: {stats.encoded} embedded, {stats.cached} from the cache ({embed.wall:.1f} s)", flush=True)
    names = sorted({r.label or "" for r in records})
    clean = np.array([names.index(r.label or "") for r in records])
    ids = [r.record_id for r in records]
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"records": len(records), "labels": len(names), "rate": args.rate, "seed": args.seed}
    for kind in ("random", "confusable"):
        noisy = plant(clean, vectors, kind, args.rate, args.seed)
        truth = noisy != clean
        planted = [
            replace(r, label=names[c], response=names[c]) if truth[i] else r
            for i, (r, c) in enumerate(zip(records, noisy, strict=True))
        ]
        shared._MEMO.clear()  # the check computes its kNN again, as a scan does (vectors come from the cache)
        with Timer() as ours_t:
            output = check_label_issue(planted, ctx)
        ours = np.array([f.flagged for f in output.findings])
        right = [
            f.details["suggested_label"] == names[clean[i]]
            for i, f in enumerate(output.findings)
            if f.flagged and truth[i] and f.details
        ]
        with Timer() as lr_t:
            folds = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
            model = LogisticRegression(max_iter=1000)
            pred_probs = cross_val_predict(model, vectors, noisy, cv=folds, method="predict_proba")
        with Timer() as cl_t:
            baseline = find_label_issues(noisy, pred_probs)
        ridge = np.zeros((len(records), len(names)))
        found = knn(vectors, k=LabelIssueConfig().k, show_progress=False)
        for block, p, _ in label_probabilities(vectors, noisy, found, ids, len(names), LabelIssueConfig(knn_weight=0)):
            ridge[block] = p
        same_classifier = find_label_issues(noisy, ridge)
        result = {
            "label_issue": {
                **scores(ours, truth),
                "wall_s": round(ours_t.wall, 2),
                "cpu_s": round(ours_t.cpu, 2),
                "suggestion_right": round(float(np.mean(right)), 4) if right else None,
            },
            "cleanlab_logreg": {
                **scores(baseline, truth),
                "wall_s": round(lr_t.wall + cl_t.wall, 2),
                "cpu_s": round(lr_t.cpu + cl_t.cpu, 2),
                "logreg_accuracy_vs_clean": round(float((pred_probs.argmax(axis=1) == clean).mean()), 4),
            },
            "cleanlab_ridge": scores(same_classifier, truth),
        }
        out[kind] = result
        ours_r, base_r = result["label_issue"], result["cleanlab_logreg"]
        ratio = {k: round(ours_r[k] / max(base_r[k], 1e-12), 3) for k in ("precision", "recall", "f1")}
        out[kind]["ratio_vs_cleanlab_logreg"] = ratio
        for method, label in (
            ("label_issue", "label_issue (Refinery)"),
            ("cleanlab_logreg", "cleanlab (LogisticRegression)"),
            ("cleanlab_ridge", "cleanlab (ridge, as the check)"),
        ):
            r = result[method]
            rows.append(
                {"noise": kind, "method": label, "flagged": r["flagged"], "precision": r["precision"],
                 "recall": r["recall"], "f1": r["f1"], "wall s": r.get("wall_s", "-"), "cpu s": r.get("cpu_s", "-")}
            )  # fmt: skip
        print(f"{kind}: done ({int(truth.sum())} planted)", flush=True)
    print(table(rows))
    for kind in ("random", "confusable"):
        r = out[kind]["ratio_vs_cleanlab_logreg"]
        right = out[kind]["label_issue"]["suggestion_right"]
        print(
            f"{kind}: label_issue / cleanlab (LogisticRegression): precision x{r['precision']}, recall x{r['recall']}, "
            f"F1 x{r['f1']}; suggested label = the planted record's true label for {right} of its hits"
        )
    return out


def timed_scan(catalog: Any, checks: list[str] | None) -> dict[str, Any]:
    from curation.checks import neighbours as shared
    from curation.checks import run_scan
    from curation.embeddings import cache, encoder

    shared._MEMO.clear()  # as in a new process: the kNN, the loaded cache and the model are not in memory
    cache._CACHES.clear()
    encoder._ENCODERS.clear()
    with Timer() as t:
        result = run_scan(catalog, checks)
    return {
        "wall_s": round(t.wall, 1),
        "cpu_s": round(t.cpu, 1),
        "checks": {
            name: {k: v for k, v in summary.items() if k in ("flagged", "seconds", "embedded", "skipped", "error")}
            for name, summary in sorted(result.checks.items())
        },
    }


def run_scan_mode(args: argparse.Namespace) -> dict[str, Any]:
    from curation.checks import DEFAULT_CHECKS
    from curation.checks.registry import CHECKS
    from curation.ingest import IngestOptions, ingest
    from refinery.demo_corpus import write_demo_corpus
    from schemas.catalog import Catalog

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.fresh:
            os.environ["REFINERY_ONNX_CACHE"] = str(Path(tmp) / "onnx")
        catalog = ingest_banking77(Path(tmp) / "banking77")
        load = machine()["load_average"]
        out["banking77_default"] = timed_scan(catalog, None)
        out["banking77_default"]["load_before"] = load
        print(f"banking77 default scan: {out['banking77_default']['wall_s']} s wall, "
              f"{out['banking77_default']['cpu_s']} s CPU", flush=True)  # fmt: skip
        cheap = [n for n in DEFAULT_CHECKS if not CHECKS[n].needs.embedding_model]
        demo_root = Path(tmp) / "demo"
        corpus = write_demo_corpus(demo_root / "corpus", n_train=args.demo_n)
        for label, checks in (("demo_cheap", cheap), ("demo_default", None)):
            demo = Catalog(demo_root / label / "catalog.duckdb")
            demo.migrate()
            ingest(demo, [corpus.train_path], IngestOptions(name="support-desk-train"))
            ingest(demo, [corpus.test_path], IngestOptions(format="csv", mapping=INTENT, eval_set="support-desk-test"))
            out[label] = timed_scan(demo, checks)
            print(f"{label}: {out[label]['wall_s']} s wall, {out[label]['cpu_s']} s CPU", flush=True)
        if args.fresh:
            shutil.rmtree(Path(tmp) / "onnx", ignore_errors=True)
    rows = []
    for name, r in out.items():
        flags = [f"{c} {s.get('flagged', s.get('skipped', s.get('error')))}" for c, s in r["checks"].items()]
        rows.append({"scan": name, "wall s": r["wall_s"], "cpu s": r["cpu_s"], "flagged": ", ".join(flags)})
    print(table(rows))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mode", choices=("labels", "scan", "all"), default="labels")
    parser.add_argument("--rate", type=float, default=0.1, help="share of the labels changed in each planting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5, help="folds of cleanlab's out-of-fold LogisticRegression")
    parser.add_argument("--demo-n", type=int, default=3000, help="training rows of the demo corpus (scan mode)")
    parser.add_argument("--fresh", action="store_true", help="scan mode: also start from an empty ONNX model cache")
    args = parser.parse_args()
    require_data()
    if args.mode in ("labels", "all"):
        result = run_labels(args)
        path = write_result("label_issues", result)
        r, c = result["random"]["label_issue"], result["confusable"]["label_issue"]
        rb, cb = result["random"]["cleanlab_logreg"], result["confusable"]["cleanlab_logreg"]
        print(f"wrote {path}")
        print(
            f"label_issue P/R random {r['precision']}/{r['recall']} (cleanlab {rb['precision']}/{rb['recall']}), "
            f"confusable {c['precision']}/{c['recall']} (cleanlab {cb['precision']}/{cb['recall']})"
        )
    if args.mode in ("scan", "all"):
        scan = run_scan_mode(args)
        path = write_result("scan_default", scan)
        print(f"wrote {path}")
        b = scan["banking77_default"]
        added = scan["demo_default"]["wall_s"] - scan["demo_cheap"]["wall_s"]
        print(f"default scan on banking77 ({b['wall_s']} s wall, {b['cpu_s']} s CPU); the embedding checks add "
              f"{added:.1f} s wall to the demo corpus's scan")  # fmt: skip


if __name__ == "__main__":
    main()
