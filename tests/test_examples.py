"""Every shipped example config loads into its model (a typo in a key or a value fails here, not mid-run)."""

from __future__ import annotations

from pathlib import Path

import yaml

from curation.snapshot import SnapshotPolicy
from eval.runner import EvalConfig
from training.config import load_train_config

INTENT = Path(__file__).resolve().parents[1] / "examples" / "intent"


def _yaml(name: str) -> dict[str, object]:
    data = yaml.safe_load((INTENT / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_the_intent_recipe_configs_load() -> None:
    train = load_train_config(_yaml("train.yaml"))
    assert train.epochs >= 1 and train.max_steps is None  # sized by epochs: the same recipe for every data set
    assert train.rehearsal.share > 0  # the shipped recipe keeps general capability
    evaluation = EvalConfig.model_validate(_yaml("eval.yaml"))
    assert "base_label_ranking" in evaluation.systems and evaluation.contamination == "exclude"
    assert evaluation.general.enabled and evaluation.general.path is None  # the shipped human references
    policy = SnapshotPolicy.model_validate(_yaml("policy.yaml"))
    assert policy.test_fraction == 0.0


def test_the_noisy_banking77_configs_load_and_differ_only_where_curation_acts() -> None:
    folder = INTENT.parent / "noisy-banking77"

    def load(name: str) -> dict[str, object]:
        data = yaml.safe_load((folder / name).read_text(encoding="utf-8"))
        assert isinstance(data, dict)
        return data

    raw = SnapshotPolicy.model_validate(load("policy-raw.yaml"))
    curated = SnapshotPolicy.model_validate(load("policy-curated.yaml"))
    assert raw.exclude_duplicates == [] and raw.blocking_checks == [] and raw.group_by == []
    assert "label_issue" in curated.blocking_checks
    assert curated.exclude_duplicates == SnapshotPolicy().exclude_duplicates
    assert set(SnapshotPolicy().blocking_checks) < set(curated.blocking_checks)
    assert raw.fractions() == curated.fractions()  # the same split sizes for both arms
    relabel = SnapshotPolicy.model_validate(load("policy-relabel.yaml"))
    assert "label_issue" not in relabel.blocking_checks  # the relabel (review auto) acts on it, nothing holds back
    assert relabel.exclude_duplicates == SnapshotPolicy().exclude_duplicates
    assert raw.fractions() == relabel.fractions()
    assert EvalConfig.model_validate(load("eval-raw.yaml")).systems == ["adapter", "base_zero_shot"]
    assert EvalConfig.model_validate(load("eval-curated.yaml")).systems == ["adapter", "champion"]


def test_every_yaml_under_examples_is_covered() -> None:
    shipped = sorted(p.relative_to(INTENT.parent).as_posix() for p in INTENT.parent.rglob("*.yaml"))
    assert shipped == [
        "intent/eval.yaml",
        "intent/policy.yaml",
        "intent/train.yaml",
        "noisy-banking77/eval-curated.yaml",
        "noisy-banking77/eval-raw.yaml",
        "noisy-banking77/policy-curated.yaml",
        "noisy-banking77/policy-raw.yaml",
        "noisy-banking77/policy-relabel.yaml",
    ]
