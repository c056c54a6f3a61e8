"""The chain the kill trials walk: ingest -> scan -> snapshot -> train (tiny model, resumable) -> eval.

Each stage starts from the state the previous stage's reference run left, so the commands and their inputs are
the ones a user runs, on a corpus small enough for CPU trials: forked by the warm server, a curation command takes
well under a second and the tiny model trains or evaluates in a few seconds (the scan, with its embedding model, is
the slowest: about 4 s).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.reliability.bench import Bench, Run
from tests.reliability.corpus import Corpus, write_corpus
from tests.reliability.kill_trials import Stage, kill_trials, run_reference
from tests.reliability.rows import Row

#: Small write transactions, so a kill can land between the chunks of one ingest or one signature store.
SMALL_CHUNKS = "curation.ingest.pipeline.CHUNK_UNITS=60,curation.similarity.minhash_store.WRITE_CHUNK=50"
#: 8 steps, a resumable checkpoint every 2, one torch thread: a train run is dominated by importing torch.
TRAIN_CONFIG = "batch_size: 4\neval_every: 4\ncheckpoint_every: 2\nlearning_rate: 0.005\ncpu_threads: 1\n"
TRAIN_STEPS = "8"
#: 12 examples against the zero-shot base, no general-capability check (it scores 256 more prompts).
EVAL_CONFIG = "cpu_threads: 1\nsystems: [adapter, base_zero_shot]\ngeneral:\n  enabled: false\n"
EVAL_LIMIT = "12"
STAGES = ("ingest", "scan", "snapshot", "train", "eval")


def resumed_from(bench: Bench) -> str | None:
    """'resumed from step N' when the adapter of the workspace was finished from a checkpoint, else 'from 0'."""
    for manifest in sorted((bench.ws / "adapters").glob("*/manifest.json")):
        step = json.loads(manifest.read_text()).get("extra", {}).get("metrics", {}).get("resumed_from_step")
        return f"resumed from step {step}" if step else "from step 0"
    return None


@dataclass
class Chain:
    """The stages' inputs on disk (corpus, tiny model, configs) under ``bench.root``."""

    bench: Bench
    model: Path
    corpus: Corpus = field(init=False)
    ids: dict[str, str] = field(default_factory=dict)  # snapshot_id, adapter_id of the reference runs
    references: dict[str, Run] = field(default_factory=dict)  # each stage's reference run

    def __post_init__(self) -> None:
        data = self.bench.root / "data"
        self.corpus = write_corpus(data)
        (data / "train.yaml").write_text(TRAIN_CONFIG, encoding="utf-8")
        (data / "eval.yaml").write_text(EVAL_CONFIG, encoding="utf-8")

    def stage(self, name: str) -> Stage:
        data = self.bench.root / "data"
        if name == "ingest":
            return Stage("ingest", ("ingest", str(self.corpus.train)), None, "ingested")
        if name == "scan":
            return Stage("scan", ("scan",), "ingested", "scanned")
        if name == "snapshot":
            return Stage("snapshot", ("snapshot", "create"), "scanned", "snapshotted")
        if name == "train":
            args: tuple[str, ...] = ("train", "--snapshot", self.ids["snapshot_id"], "--base-model", str(self.model))
            args += ("--config", str(data / "train.yaml"), "--max-steps", TRAIN_STEPS)
            # killed while it trains (steps, checkpoints, the adapter folder), where a resume can happen
            resume_points = ("tick", "staged", "renamed")
            return Stage("train (resume)", args, "snapshotted", "trained", note=resumed_from, kinds=resume_points)
        if name == "eval":
            args = ("eval", "--adapter", self.ids["adapter_id"], "--eval-set", "heldout", "--limit", EVAL_LIMIT)
            args += ("--config", str(data / "eval.yaml"))
            return Stage("eval", args, "trained", "evaluated")
        raise ValueError(name)

    def after(self, name: str, reference: Run) -> None:
        """What the next stages need from a stage's reference run."""
        if name == "ingest":  # the eval set the scan's contamination check and the eval use
            run = self.bench.run("ingest", str(self.corpus.eval), "--eval-set", "heldout", "--json")
            if run.code != 0:
                raise RuntimeError(f"ingesting the eval set failed: {run.stderr[-1000:]}")
            self.bench.save("ingested")
        elif name == "snapshot":
            self.ids["snapshot_id"] = reference.json["snapshot_id"]
        elif name == "train":
            self.ids["adapter_id"] = reference.json["adapter_id"]

    def walk(self, trials: Callable[[str], int], seed: int, log: Callable[[Row], None]) -> list[Row]:
        """Every stage in order: its reference run, then ``trials(stage)`` kill trials (a row where there are any).

        The reference runs leave the saved states the other scenarios start from (``ingested`` ... ``evaluated``).
        """
        rows = []
        for name in STAGES:
            stage = self.stage(name)
            if trials(name) > 0:
                row, reference = kill_trials(self.bench, stage, trials(name), random.Random(f"{seed}/{name}"))
                log(row)
                rows.append(row)
            else:
                reference, _ = run_reference(self.bench, stage)
            self.references[name] = reference
            self.after(name, reference)
        return rows
