"""`refinery adapter merge` and `refinery generate` through the real CLI, on an adapter of the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from refinery.cli import app
from refinery.cli_adapter import register
from schemas.manifest import ManifestError, load_manifest
from tests.support.cli import invoke_cli, run_cli
from tests.support.tiny_model import build_tiny_model, randomize_weights

pytestmark = pytest.mark.slow

register(app)  # refinery.cli calls this too; a second call changes nothing
register(app)

LABELS = ["alpha", "beta", "gamma"]
PROMPTS = ["Where is my card?", "beta case 7"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A workspace holding one adapter (3 steps) of a randomised tiny model: answers differ by prompt."""
    root = tmp_path_factory.mktemp("adapter-cli")
    base = randomize_weights(build_tiny_model(root / "tiny"), scale=0.2)
    rows = [
        json.dumps({"messages": [{"role": "user", "content": f"{LABELS[i % 3]} case {i}"},
                                 {"role": "assistant", "content": LABELS[i % 3]}]})
        for i in range(40)
    ]  # fmt: skip
    data = root / "train.jsonl"
    data.write_text("\n".join(rows) + "\n")
    ws = root / "ws"
    run_cli(ws, "ingest", str(data))
    run_cli(ws, "scan", "--checks", "exact")
    snap = run_cli(ws, "snapshot", "create")
    config = root / "train.yaml"
    config.write_text("batch_size: 8\nlearning_rate: 0.02\n")
    args = ["--snapshot", snap["snapshot_id"], "--base-model", str(base), "--config", str(config)]
    adapter = run_cli(ws, "train", *args, "--max-steps", "3")
    return {"ws": ws, "base": base, "adapter_id": adapter["adapter_id"], "root": root}


@pytest.fixture(scope="module")
def merged(trained: dict[str, Any]) -> Path:
    out = trained["root"] / "merged"
    payload = run_cli(trained["ws"], "adapter", "merge", trained["adapter_id"], str(out))
    assert payload["path"] == str(out.resolve()) and payload["merged_id"] == trained["adapter_id"] + "-merged"
    return out


def _greedy(model: Any, tokenizer: Any, prompt: str) -> str:
    from training.inference import generate

    return generate(model, tokenizer, [{"role": "user", "content": prompt}], max_new_tokens=12)


def test_merged_folder_answers_like_base_plus_adapter(trained: dict[str, Any], merged: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from refinery.adapters import verified_adapter
    from refinery.workspace import open_workspace
    from training.inference import load_for_inference

    adapter = verified_adapter(open_workspace(trained["ws"]), trained["adapter_id"])
    peft_model, tokenizer = load_for_inference(adapter.base_path, adapter.adapter_path)
    plain: Any = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, use_safetensors=True).eval()
    plain_tokenizer = AutoTokenizer.from_pretrained(merged)
    assert not hasattr(plain, "peft_config")  # a standalone model, no peft needed
    for prompt in PROMPTS:
        assert _greedy(plain, plain_tokenizer, prompt) == _greedy(peft_model, tokenizer, prompt)
    base_model, base_tokenizer = load_for_inference(adapter.base_path)
    # the adapter changed the answers, so the comparison above is not base versus base
    assert any(_greedy(base_model, base_tokenizer, p) != _greedy(peft_model, tokenizer, p) for p in PROMPTS)
    ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, peft_model(ids).logits, rtol=1e-4, atol=1e-4)
    # the CLI answers the same as the library with the adapter applied
    cli = run_cli(trained["ws"], "generate", "--adapter", trained["adapter_id"], PROMPTS[0], "--max-new-tokens", "12")
    assert cli == {
        "adapter_id": trained["adapter_id"],
        "prompt": PROMPTS[0],
        "answer": _greedy(peft_model, tokenizer, PROMPTS[0]),
        "base_only": False,
    }


def test_merged_manifest_verifies_and_tampering_is_detected(
    trained: dict[str, Any], merged: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(merged)
    assert manifest.kind == "merged_model" and manifest.id == trained["adapter_id"] + "-merged"
    assert manifest.parents[0] == trained["adapter_id"] and manifest.parents[1].startswith("base_")
    assert "model.safetensors" in manifest.files and "config.json" in manifest.files
    assert not list(merged.glob(".*")), "no staging leftovers inside the merged folder"
    copy = tmp_path / "copy"
    shutil.copytree(merged, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(ManifestError, match=r"config\.json was modified"):
        load_manifest(copy)
    again = invoke_cli(trained["ws"], "adapter", "merge", trained["adapter_id"], str(merged), "--json")
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_generate_plain_and_base_only(trained: dict[str, Any]) -> None:
    from refinery.adapters import verified_adapter
    from refinery.workspace import open_workspace
    from training.inference import generate, load_for_inference

    ws, adapter_id = trained["ws"], trained["adapter_id"]
    printed = invoke_cli(ws, "generate", "--adapter", adapter_id, PROMPTS[1], "--max-new-tokens", "8")
    assert printed.exit_code == 0, printed.output
    answer = run_cli(ws, "generate", "-a", adapter_id, PROMPTS[1], "--max-new-tokens", "8")["answer"]
    assert printed.stdout.strip() == answer
    base_only = run_cli(ws, "generate", "-a", adapter_id, PROMPTS[1], "--max-new-tokens", "8", "--base-only")
    model, tokenizer = load_for_inference(trained["base"])
    expected = generate(model, tokenizer, [{"role": "user", "content": PROMPTS[1]}], max_new_tokens=8)
    assert base_only["answer"] == expected and base_only["base_only"] is True
    system = run_cli(ws, "generate", "-a", adapter_id, PROMPTS[1], "--system", "Be brief.", "--max-new-tokens", "8")
    adapter = verified_adapter(open_workspace(ws), adapter_id)
    tuned, tuned_tokenizer = load_for_inference(adapter.base_path, adapter.adapter_path)
    briefed = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[1]}]
    assert system["answer"] == generate(tuned, tuned_tokenizer, briefed, max_new_tokens=8)
    assert system["answer"] != answer  # the system message reached the prompt


UNKNOWN = "adp_0000000000000000"


@pytest.mark.parametrize("command", [["adapter", "merge", UNKNOWN, "OUT"], ["generate", "-a", UNKNOWN, "hi"]])
def test_unknown_adapter_is_a_usage_error(trained: dict[str, Any], tmp_path: Path, command: list[str]) -> None:
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    result = invoke_cli(trained["ws"], *args)
    assert result.exit_code == 2 and f"no adapter {UNKNOWN}" in result.stderr
    assert not (tmp_path / "out").exists()


def test_changed_base_model_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    from refinery.workspace import open_workspace

    ws = tmp_path / "ws"
    shutil.copytree(trained["ws"], ws)
    base_copy = tmp_path / "base"
    shutil.copytree(trained["base"], base_copy)
    with open_workspace(ws).catalog.write() as con:
        con.execute("UPDATE base_models SET path = ?", [str(base_copy)])
    (base_copy / "config.json").write_text((base_copy / "config.json").read_text() + " ")
    result = invoke_cli(ws, "generate", "-a", trained["adapter_id"], "hi")
    assert result.exit_code == 1 and "changed since" in result.stderr
