"""Scan ids are content hashes of the record set and the checks' configs: moving or renaming code must never change
them (a changed id makes every stored scan look stale and reruns it). Golden ids, recorded before the checks were
regrouped into one spec per check, pinned for every check with its default config and with typical options.

The embedding checks run a stand-in function here (the ids depend on their config and model id, not on their
code), and the model id is pinned, so no model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.checks import CHECKS, CheckOutput, Finding, run_scan
from curation.checks import runner as scan_runner
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from schemas.catalog import Catalog

#: The default checks before the embedding checks joined them.
EARLIER_DEFAULT = (
    "exact", "exact_prompt", "near_dup", "empty_response", "truncated", "repetitive", "length", "refusal", "pii",
    "contamination",
)  # fmt: skip
#: (checks, config) -> the scan id recorded before the regrouping.
GOLDEN: list[tuple[list[str] | None, dict[str, dict[str, object]] | None, str]] = [
    (["exact"], None, "scan_86602825e7fb67a5"),
    # the default checks: the embedding checks joined them in 2026-12, then label_issue judged near-miss labels
    # (max_label_edits): each a new default scan, on purpose (it finds more); the earlier default set, named, is
    # unchanged
    (None, None, "scan_e00035eac9fdde5b"),
    (list(EARLIER_DEFAULT), None, "scan_c8019f94bab097a8"),
    (["near_dup"], {"near_dup": {"scope": "prompt", "threshold": 0.8}}, "scan_53e6bd9331513553"),
    (["near_dup_prompt"], None, "scan_6701e4feb88c3737"),
    (["near_dup_response"], {"near_dup_response": {"num_perm": 64}}, "scan_7f6aa6cc6f6db108"),
    (["near_dup", "exact_prompt"], {"near_dup": {"bands": 16, "rows": 8}}, "scan_812d71892a9ff716"),
    (["near_dup_eval"], None, "scan_b455b0adafcbecd5"),
    (["near_dup_eval"], {"near_dup_eval": {"scope": "pair", "eval_sets": ["heldout"]}}, "scan_532fb6cae2262159"),
    (["contamination"], {"contamination": {"threshold": 0.5, "short_ngram": 5}}, "scan_62c528135003fcd9"),
    (
        ["empty_response", "truncated", "repetitive", "length", "refusal", "pii"],
        {"pii": {"threshold": 0.7, "kinds": ["email"]}, "length": {"z_threshold": 3.0}},
        "scan_2b72f8d5b0eb7728",
    ),
    (["outlier"], None, "scan_83516e725af7188b"),
    (
        ["outlier", "inconsistency", "semantic_dup"],
        {
            "outlier": {"k": 5, "by_label": False},
            "semantic_dup": {"threshold": 0.9},
            "inconsistency": {"minhash_threshold": None},
        },
        "scan_548329175df1158b",
    ),
    (
        [
            "contamination",
            "empty_response",
            "exact",
            "exact_prompt",
            "inconsistency",
            "length",
            "near_dup",
            "near_dup_eval",
            "near_dup_prompt",
            "near_dup_response",
            "outlier",
            "pii",
            "refusal",
            "repetitive",
            "semantic_dup",
            "truncated",
        ],
        None,
        "scan_5c12b381f825d75c",
    ),  # every check
]


def _chat(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


@pytest.fixture
def corpus(tmp_path: Path, catalog: Catalog) -> Catalog:
    train = [_chat(f"question {i} about card {i % 5}, please help", f"answer {i % 3} to it") for i in range(12)]
    train.append(_chat("My email is jane.doe@gmail.com, call me", "Sure, I'm sorry, but I cannot"))
    (tmp_path / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    (tmp_path / "eval.jsonl").write_text(_chat("question 3 about card 3, please help", "x") + "\n", encoding="utf-8")
    ingest(catalog, [tmp_path / "train.jsonl"], IngestOptions(name="train"))
    ingest(catalog, [tmp_path / "eval.jsonl"], IngestOptions(eval_set="heldout"))
    return catalog


def _stand_in(records: object, ctx: object) -> CheckOutput:
    return CheckOutput([Finding(r.record_id, 0.0, False) for r in records])  # type: ignore[attr-defined]


@pytest.mark.parametrize(("checks", "config", "expected"), GOLDEN, ids=[str(i) for i in range(len(GOLDEN))])
def test_scan_ids_are_unchanged(
    corpus: Catalog,
    monkeypatch: pytest.MonkeyPatch,
    checks: list[str] | None,
    config: dict[str, dict[str, object]] | None,
    expected: str,
) -> None:
    monkeypatch.setattr(scan_runner, "model_id", lambda model=None: "emb_0123456789abcdef")
    for name in ("outlier", "inconsistency", "semantic_dup", "label_issue"):
        monkeypatch.setitem(CHECKS, name, CHECKS[name].with_function(_stand_in))
    result = run_scan(corpus, checks, config) if checks is not None else run_scan(corpus)
    assert result.scan_id == expected
