"""Base-model sources: local folders (hashed, safetensors only), hub ids offline, missing dependencies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from training._deps import MissingDependencyError, require_train_deps
from training.base_model import BaseModelError, resolve_base_model


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_local_folder_is_hashed_and_its_id_follows_its_content(tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    first = resolve_base_model(str(tiny_model_dir), cache)
    assert first.model_id.startswith("base_") and first.path == tiny_model_dir.resolve()
    assert first.source == f"folder:{tiny_model_dir.resolve()}" and not first.trust_remote_code
    copy = resolve_base_model(str(_copy(tiny_model_dir, tmp_path / "copy")), cache)
    assert (copy.model_id, copy.sha256) == (first.model_id, first.sha256)  # same content, same model
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (tmp_path / "copy" / "config.json").write_text(json.dumps(config))
    changed = resolve_base_model(str(tmp_path / "copy"), cache)
    assert changed.model_id != first.model_id
    (tmp_path / "copy" / "README.md").write_text("not part of the model")
    assert resolve_base_model(str(tmp_path / "copy"), cache).sha256 == changed.sha256


def test_pickle_only_weights_are_refused(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "pickled")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(BaseModelError, match="safetensors only"):
        resolve_base_model(str(folder), tmp_path / "cache")


def test_remote_code_needs_explicit_trust(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BaseModelError, match="trust_remote_code=True"):
        resolve_base_model(str(folder), tmp_path / "cache")
    assert resolve_base_model(str(folder), tmp_path / "cache", trust_remote_code=True).trust_remote_code


def test_missing_folders_and_unreachable_hubs_get_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(BaseModelError, match="does not exist"):
        resolve_base_model(str(tmp_path / "nowhere"), tmp_path / "cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError, match="pass a local model folder"):
        resolve_base_model("example-org/no-such-model", tmp_path / "cache")


def test_a_missing_dependency_names_the_install_command():
    require_train_deps()
    with pytest.raises(MissingDependencyError, match=r"pip install 'refinery\[train\]'"):
        require_train_deps("no_such_module_for_refinery")
