from __future__ import annotations

import random

from curation.similarity.exact import KeepRank, cluster_exact, dedup_key, normalize_for_dedup


def test_normalisation_ignores_case_whitespace_and_punctuation() -> None:
    assert normalize_for_dedup("  Where is  my CARD?!\n") == "where is my card"
    assert normalize_for_dedup("ＦＵＬＬ width") == "full width"  # NFKC
    assert dedup_key("Has my top up gone through?") == dedup_key("has my top-up gone through")
    assert dedup_key("a", "b") != dedup_key("a b", "")  # parts are kept apart


def _rank(rid: str, batch_time: str = "2026-01-01T00:00:00", row: int = 1, review: int = 1) -> KeepRank:
    return KeepRank(review, 0.0, (batch_time, row, 0), rid)


def test_kept_member_is_earliest_ingest_then_smallest_id_whatever_the_input_order() -> None:
    ranks = {
        "rec_b": _rank("rec_b", row=5),
        "rec_a": _rank("rec_a", row=9),
        "rec_c": _rank("rec_c", row=2),
        "rec_d": _rank("rec_d", row=2),
        "rec_solo": _rank("rec_solo"),
    }
    items = [("rec_a", "k1"), ("rec_b", "k1"), ("rec_c", "k2"), ("rec_d", "k2"), ("rec_solo", "k3")]
    seen = set()
    for seed in range(5):
        shuffled = items[:]
        random.Random(seed).shuffle(shuffled)
        clusters = cluster_exact(shuffled, ranks, "xd_")
        seen.add(tuple((c.cluster_id, c.kept, c.members, c.keep_reason) for c in clusters))
    assert len(seen) == 1
    clusters = cluster_exact(items, ranks, "xd_")
    by_kept = {c.kept: c for c in clusters}
    assert set(by_kept) == {"rec_b", "rec_c"}
    assert by_kept["rec_b"].keep_reason == "earliest ingest" and by_kept["rec_b"].removed == ("rec_a",)
    assert by_kept["rec_c"].keep_reason == "smallest record id" and by_kept["rec_c"].removed == ("rec_d",)


def test_review_approval_beats_earlier_ingest() -> None:
    ranks = {"rec_x": _rank("rec_x", row=1), "rec_y": _rank("rec_y", row=50, review=0)}
    (cluster,) = cluster_exact([("rec_x", "k"), ("rec_y", "k")], ranks, "xd_")
    assert cluster.kept == "rec_y" and cluster.keep_reason == "approved in review"
