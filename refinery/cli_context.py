"""What every command shares, in one leaf module the command modules import (and that imports none of them): the
workspace chosen by the global ``--workspace`` option, config-file loading, and the one mapping from exceptions to
exit codes.

Exit codes: 0 done; 1 a verification, gate or threshold failed (:class:`schemas.errors.Failure`); 2 the input is
wrong (:class:`schemas.errors.InputError`, a pydantic ``ValidationError`` of a config, or training's config
errors). Anything else is a bug and ends with a traceback.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from refinery.errors import UsageError
from refinery.output import stderr
from refinery.workspace import Workspace, open_workspace, resolve_workspace_path
from schemas.errors import Failure, InputError

EXIT_OK = 0
EXIT_FAILED = 1  # a failed check, gate or verification
EXIT_USAGE = 2  # a usage or configuration error

_chosen: dict[str, Path | None] = {"workspace": None}


def choose_workspace(path: Path | None) -> None:
    """Remember the global ``--workspace`` option (the main app's callback parses it before any command runs)."""
    _chosen["workspace"] = path


def current_workspace() -> Workspace:
    """The chosen workspace, created when it does not exist yet."""
    return open_workspace(_chosen["workspace"])


def current_workspace_path() -> Path:
    """The chosen workspace's folder, without creating anything (read-only commands)."""
    return resolve_workspace_path(_chosen["workspace"])


def load_config(path: Path | None) -> dict[str, Any]:
    """A YAML or JSON config file (``.json``: JSON) as a mapping; an empty mapping without a path."""
    if path is None:
        return {}
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    import yaml

    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping at the top level")
    return data


def usage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'the user asked for something wrong or impossible' (exit 2)."""
    from pydantic import ValidationError

    found: list[type[BaseException]] = [InputError, ValidationError]
    with contextlib.suppress(ImportError):  # training is an extra; its config errors are usage errors too
        from training.base_model import BaseModelError
        from training.config import ConfigError

        found += [ConfigError, BaseModelError]
    return tuple(found)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Map library exceptions to a one-line message on stderr and the documented exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except usage_errors() as exc:
        stderr.print(f"[red]error:[/red] {_one_line(exc)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except Failure as exc:
        stderr.print(f"[red]failed:[/red] {_one_line(exc)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None


def _one_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return " ".join(str(exc).split())
