"""Near-duplicate clusters of a corpus in Parquet shards (``near_dup_files``) and the LSH band join as a shuffle.

On Toolformer + banking77 (real data) in three Parquet files, the clusters, kept members and similarities equal the
in-memory engine's (``find_near_duplicates``) on the same records, in the exact regime (every bucket completed) and in
the sampled one, on this process and on a real local Ray cluster; the driver holds only the rows that share a bucket.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.executors import ExecutorConfig, open_executor
from curation.executors.base import LocalExecutor
from curation.similarity import band_shuffle
from curation.similarity import near_dup_files as near_dup_files_module
from curation.similarity.band_shuffle import distributed_band_runs
from curation.similarity.exact import DuplicateCluster, KeepRank
from curation.similarity.near_dup import NearDupConfig, find_near_duplicates, scope_text
from curation.similarity.near_dup_files import near_dup_files
from curation.similarity.near_dup_join import band_runs
from schemas.errors import InputError
from tests.support.ray_cluster import local_ray_cluster


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    with local_ray_cluster(num_cpus=2) as address:
        yield address


def real_records(shared_data: Path) -> list[dict[str, str]]:
    """Toolformer and banking77 as (record_id, prompt, response), sorted by id."""
    tool = json.loads((shared_data / "gpteacher_toolformer/toolformer-dedupe-only.json").read_text(encoding="utf-8"))
    rows = [
        {"record_id": f"t{i:06d}", "prompt": f"{r['instruction']}\n\n{r['input']}".strip(), "response": r["output"]}
        for i, r in enumerate(tool)
    ]
    with (shared_data / "banking77/train.csv").open(encoding="utf-8") as handle:
        rows += [
            {"record_id": f"b{i:06d}", "prompt": r["text"], "response": r["category"]}
            for i, r in enumerate(csv.DictReader(handle))
        ]
    return sorted(rows, key=lambda r: r["record_id"])


def write_files(rows: list[dict[str, str]], folder: Path, files: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for k in range(files):
        part = rows[k * len(rows) // files : (k + 1) * len(rows) // files]
        paths.append(folder / f"part-{k}.parquet")
        pq.write_table(pa.Table.from_pylist(part), paths[-1])
    return paths


def stored_clusters(path: Path) -> list[DuplicateCluster]:
    """clusters.parquet read back as the engine's clusters (members sorted, clusters by id)."""
    rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: (r["cluster_id"], r["record_id"]))
    clusters = []
    for cluster_id in dict.fromkeys(r["cluster_id"] for r in rows):
        members = [r for r in rows if r["cluster_id"] == cluster_id]
        kept = {r["kept_record_id"] for r in members}
        assert len(kept) == 1
        clusters.append(
            DuplicateCluster(
                cluster_id=cluster_id,
                kept=kept.pop(),
                members=tuple(r["record_id"] for r in members),
                keep_reason="smallest record id",
                similarities=tuple(r["similarity_to_kept"] for r in members),
            )
        )
    return clusters


def in_memory(rows: list[dict[str, str]], config: NearDupConfig) -> list[DuplicateCluster]:
    ids = [r["record_id"] for r in rows]
    texts = [scope_text(r["prompt"], r["response"], config.scope) for r in rows]
    ranks = {i: KeepRank(1, 0.0, ("", 0, 0), i) for i in ids}
    return find_near_duplicates(ids, texts, ranks, config, mode="clusters").clusters


@pytest.mark.realdata
@pytest.mark.slow
def test_clusters_from_parquet_files_equal_the_in_memory_engine_locally_and_on_ray(
    tmp_path: Path, shared_data: Path, ray_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(near_dup_files_module, "TASK_ROWS", 400)  # the groups packed into many join tasks
    rows = real_records(shared_data)
    paths = write_files(rows, tmp_path / "corpus", files=3)
    exact, sampled = NearDupConfig(), NearDupConfig(completion_limit=0)
    for config, regime in ((exact, 1), (sampled, 0)):
        expected = in_memory(rows, config)
        assert len(expected) > 300 and sum(len(c.members) for c in expected) > 2000
        runs = {}
        for kind, address in (("local", None), ("ray", ray_address)):
            with open_executor(ExecutorConfig(kind=kind, ray_address=address)) as executor:
                work = tmp_path / f"work-{kind}-{regime}"
                runs[kind] = near_dup_files(paths, config, executor, work)
                stages = {name: s.tasks for name, s in executor.stats.items()}
            found = runs[kind]
            assert found.stats["exact"] == regime
            assert stored_clusters(found.path) == expected, (kind, regime)
            assert found.clusters == len(expected) and found.clustered == sum(len(c.members) for c in expected)
            assert found.records == len(rows) and 0 < found.shared_rows < len(rows)  # the driver held a part only
            assert stages["near_dup:bands:map"] == 3 and stages["near_dup:join:map"] == 3
            assert stages["near_dup:join:reduce"] == found.stats["join_tasks"] > 5
            # the sampled regime needs the count pass (whether to complete every bucket is decided over all tasks)
            assert stages.get("near_dup:count:reduce", 0) == (found.stats["join_tasks"] if regime == 0 else 0)
        a = pq.read_table(tmp_path / f"work-local-{regime}" / "clusters.parquet")
        assert a.equals(pq.read_table(tmp_path / f"work-ray-{regime}" / "clusters.parquet"))
        assert a.column("nearest_similarity").null_count == 0  # every member has a verified neighbour


def test_the_band_shuffle_builds_the_buckets_of_the_whole_join(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    signatures = rng.integers(0, 40, size=(6000, 128), dtype=np.uint32)  # few values: many shared buckets
    signatures[::7] = signatures[5]  # and a big family
    active = np.flatnonzero(rng.random(6000) > 0.05)
    monkeypatch.setattr(band_shuffle, "PART_ENTRIES", 20_000)  # 7 reduce tasks
    executor = LocalExecutor(ExecutorConfig(shard_records=1000))
    runs = distributed_band_runs(executor, signatures, active, 23, 5, "t")
    assert executor.stats["t:map"].tasks == 6 and executor.stats["t:reduce"].tasks == 7
    for band, got in enumerate(runs):
        want = band_runs(signatures, active, band, 5)
        assert np.array_equal(got.members, want.members) and np.array_equal(got.starts, want.starts), band
    assert sum(len(r.members) for r in runs) > 6000


def test_files_that_cannot_be_read_are_one_line_errors(tmp_path: Path) -> None:
    config, executor = NearDupConfig(), LocalExecutor()
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"record_id": ["a"], "text": ["x"]}), wrong)
    with pytest.raises(InputError, match=r"wrong.parquet: no column prompt, response \(needs record_id, prompt"):
        near_dup_files([wrong], config, executor, tmp_path / "work")
    text = tmp_path / "notes.parquet"
    text.write_text("not parquet", encoding="utf-8")
    with pytest.raises(InputError, match=r"notes\.parquet: not a readable Parquet file"):
        near_dup_files([text], config, executor, tmp_path / "work")


def _families(folder: Path) -> Path:
    """Two Parquet shards: 200 texts, 50 of them in 10 families of 5 (one word changed per copy), members of a family
    in both shards."""
    import random

    rng = random.Random(4)
    vocab = [f"w{i}" for i in range(3000)]
    rows = []
    for base in range(160):
        words = rng.choices(vocab, k=50)
        copies = 5 if base < 10 else 1
        for copy in range(copies):
            changed = list(words)
            if copy:
                changed[rng.randrange(50)] = rng.choice(vocab)
            rows.append({"record_id": f"r{base:03d}-{copy}", "prompt": f"Topic {base}", "response": " ".join(changed)})
    rng.shuffle(rows)
    folder.mkdir()
    for k in range(2):
        pq.write_table(pa.Table.from_pylist(rows[k::2]), folder / f"part-{k}.parquet")
    return folder


def test_refinery_dedup_clusters_a_folder_of_shards_without_a_workspace(tmp_path: Path) -> None:
    from tests.support.cli import invoke_cli

    corpus = _families(tmp_path / "corpus")
    out = tmp_path / "out"
    result = invoke_cli(tmp_path / "no-workspace", "dedup", str(corpus), "--out", str(out), "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["records"] == 200 and summary["files"] == 2
    assert summary["clusters"] == 10 and summary["clustered"] == 50 and summary["removed"] == 40
    assert summary["executor"]["stages"]["near_dup:bands:map"]["tasks"] == 2
    table = pq.read_table(out / "clusters.parquet").to_pylist()
    assert {r["record_id"].split("-")[0] for r in table} == {f"r{b:03d}" for b in range(10)}
    assert all(r["kept_record_id"] == r["record_id"].split("-")[0] + "-0" for r in table)  # smallest id kept
    assert all(r["similarity_to_kept"] >= 0.7 for r in table)
    assert not (tmp_path / "no-workspace").exists() and not (out / "signatures").exists()  # removed at the end
    kept = invoke_cli(tmp_path, "dedup", str(corpus), "--out", str(tmp_path / "kept"), "--keep-signatures", "--json")
    assert kept.exit_code == 0 and len(list((tmp_path / "kept" / "signatures").glob("*.parquet"))) == 2
    bad = invoke_cli(tmp_path, "dedup", str(tmp_path / "missing"), "--out", str(out), "--json")
    assert bad.exit_code == 2 and json.loads(bad.stdout)["error"].endswith("missing does not exist")
    wrong = invoke_cli(tmp_path, "dedup", str(corpus), "--out", str(out), "--threshold", "2", "--json")
    assert wrong.exit_code == 2 and "threshold: Input should be less than or equal to 1" in wrong.stdout
