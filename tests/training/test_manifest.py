"""`refinery train` end to end on the tiny model: the adapter artifact and its manifest carry everything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from refinery.cli import app
from schemas.manifest import load_manifest
from tests.support.tiny_model import build_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

LABELS = ["alpha", "beta", "gamma"]


def _run(ws: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["--workspace", str(ws), "--quiet", *args, "--json"])
    assert result.exit_code == 0, result.output + (result.stderr or "")
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


def test_train_writes_a_complete_verified_manifest(tmp_path: Path) -> None:
    base = build_tiny_model(tmp_path / "tiny")
    rows = [
        json.dumps({"messages": [{"role": "user", "content": f"{LABELS[i % 3]} case {i}"},
                                 {"role": "assistant", "content": LABELS[i % 3]}]})
        for i in range(60)
    ]  # fmt: skip
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    ws = tmp_path / "ws"
    _run(ws, "ingest", str(tmp_path / "train.jsonl"))
    _run(ws, "scan", "--checks", "exact")
    snapshot = _run(ws, "snapshot", "create")["snapshot_id"]
    (tmp_path / "train.yaml").write_text("batch_size: 8\nlearning_rate: 0.02\neval_every: 2\nseed: 7\n")
    args = ["--snapshot", snapshot, "--base-model", str(base), "--config", str(tmp_path / "train.yaml")]
    result = _run(ws, "train", *args, "--max-steps", "4")

    folder = Path(result["path"])
    manifest = load_manifest(folder)  # every file hash verifies
    assert manifest.kind == "adapter" and manifest.id == result["adapter_id"]
    assert snapshot in manifest.parents
    extra, config = manifest.extra, manifest.config
    assert extra["snapshot_id"] == snapshot and extra["seed"] == 7 and extra["method"] == "lora"
    assert extra["base_model_sha256"] == config["base_model"]["sha256"] and extra["base_model_id"] in manifest.parents
    assert config["train"]["max_steps"] == 4 and config["train"]["learning_rate"] == 0.02
    assert config["train"]["lora"]["rank"] == 16 and config["train"]["trust_remote_code"] is False
    assert {"torch", "transformers", "peft", "safetensors"} <= manifest.versions.keys()
    assert manifest.hardware["cpu_count"] >= 1
    for rel in (extra["weights"], *extra["curves_files"], "adapter/adapter_config.json"):
        assert rel in manifest.files and (folder / rel).is_file()
    assert extra["weights"].endswith(".safetensors") and not list(folder.rglob("*.bin"))
    assert [p["step"] for p in extra["loss_curves"]["train"]] == [1, 2, 3, 4]
    assert [p["step"] for p in extra["loss_curves"]["validation"]] == [2, 4]
    metrics = extra["metrics"]
    assert metrics["steps"] == 4 and metrics["val_loss"] == min(p["loss"] for p in extra["loss_curves"]["validation"])
    assert metrics["real_tokens"] > 0 and metrics["tokens_per_second"] > 0 and metrics["peak_rss_mb"] > 0

    again = _run(ws, "train", *args, "--max-steps", "4")  # the same inputs: the same artifact, not retrained
    assert again["adapter_id"] == result["adapter_id"]
