"""The rule for what tests need from outside the repository: skipped locally, a failure under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.require import require_module, require_path


def test_present_things_are_returned(tmp_path: Path) -> None:
    assert require_module("json", "stdlib").dumps([1]) == "[1]"
    assert require_path(tmp_path, "a temporary folder") == tmp_path


def test_missing_things_skip_outside_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no_such_module cannot be imported .*: pip install it"):
        require_module("no_such_module", "pip install it")
    with pytest.raises(pytest.skip.Exception, match="not found: the data"):
        require_path(tmp_path / "absent", "the data")


def test_missing_things_fail_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match=r"no_such_module cannot be imported .*; CI must provide it"):
        require_module("no_such_module", "pip install it")
    with pytest.raises(pytest.fail.Exception, match="not found: the data; CI must provide it"):
        require_path(tmp_path / "absent", "the data")


def test_ci_run_sets_ci() -> None:
    script = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert "\nexport CI=1\n" in script and script.index("export CI=1") < script.index("make test")
