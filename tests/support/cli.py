"""The ``refinery`` CLI run in-process with typer's CliRunner against a workspace, in quiet mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from refinery.cli import app


def invoke_cli(ws: Path, *args: str) -> Result:
    """``refinery --workspace WS --quiet ARGS...``; the result, whatever its exit code."""
    return CliRunner().invoke(app, ["--workspace", str(ws), "--quiet", *args])


def run_cli(ws: Path, *args: str) -> dict[str, Any]:
    """``refinery ... ARGS... --json``, which must exit 0; its JSON object."""
    result = invoke_cli(ws, *args, "--json")
    assert result.exit_code == 0, result.output + (result.stderr or "")
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload
