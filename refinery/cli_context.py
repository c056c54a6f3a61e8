"""What every command shares, in one leaf module the command modules import (and that imports none of them): the
workspace chosen by the global ``--workspace`` option, config-file loading, the options every command takes, and
the one mapping from exceptions to exit codes.

Exit codes: 0 done; 1 a verification, gate or threshold failed (:class:`schemas.errors.Failure`); 2 the input is
wrong (:class:`schemas.errors.InputError`, a pydantic ``ValidationError`` of a config, training's config errors,
an argument the parser refuses, a workspace that is not there). Anything else is a bug and ends with a traceback.
Under ``--json`` an error is also one JSON object on stdout, ``{"error": ..., "exit_code": ...}``, unless the
command printed its own object before it failed (that object then says what failed, and stdout still holds one).

Workspaces: only ``refinery ingest`` and ``refinery demo`` create the workspace (the folder and its catalog) when
it does not exist yet; they are the commands that bring data in from outside (``refinery restore`` creates the
workspace it is given as DEST, never the ``--workspace`` one). Every other command needs
``<workspace>/catalog.duckdb`` and refuses a folder without one (exit 2, naming the path and how to create it), so
a mistyped ``--workspace`` never creates an empty workspace and never reads as "no data yet".
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from refinery.errors import UsageError
from refinery.output import emit_json, json_emitted, json_requested, start_session, stderr
from refinery.workspace import WORKSPACE_ENV, Workspace, open_workspace, resolve_workspace_path
from schemas.atomic import disk_full_error, is_disk_full
from schemas.catalog import CATALOG_NAME
from schemas.errors import Failure, InputError

if TYPE_CHECKING:
    from curation.executors import ExecutorConfig

EXIT_OK = 0
EXIT_FAILED = 1  # a failed check, gate or verification
EXIT_USAGE = 2  # a usage or configuration error

#: The commands that may create a workspace that does not exist yet (see the module docstring).
CREATING_COMMANDS = ("ingest", "demo")

_chosen: dict[str, Path | None] = {"workspace": None}


def choose_workspace(path: Path | None) -> None:
    """Remember the global ``--workspace`` option (the main app's callback parses it before any command runs)."""
    _chosen["workspace"] = path


def current_workspace_path() -> Path:
    """The chosen workspace's folder, which must hold a catalog; nothing is created or migrated (read-only
    commands). A folder without a catalog is a :class:`UsageError` naming it."""
    root = resolve_workspace_path(_chosen["workspace"])
    _refuse_a_file(root)
    if not (root / CATALOG_NAME).is_file():
        raise UsageError(
            f"no workspace at {root} (no {CATALOG_NAME} there): check --workspace or ${WORKSPACE_ENV}, "
            f"or create one with `refinery --workspace {root} ingest FILE...`"
        )
    return root


def current_workspace() -> Workspace:
    """The chosen workspace, which must exist (see :func:`current_workspace_path`), with its catalog brought up to
    the newest migration."""
    ws = Workspace(current_workspace_path())
    ws.catalog.migrate()
    return ws


def create_workspace() -> Workspace:
    """The chosen workspace, created when it does not exist yet: only for :data:`CREATING_COMMANDS`."""
    root = resolve_workspace_path(_chosen["workspace"])
    _refuse_a_file(root)
    try:
        return open_workspace(root)
    except OSError as exc:  # a parent that is a file, no permission, a read-only disk
        raise UsageError(f"cannot create workspace {root}: {exc.strerror or exc}") from exc


def _refuse_a_file(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UsageError(f"workspace {root} is a file, not a folder: check --workspace or ${WORKSPACE_ENV}")


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


ExecutorOpt = Annotated[
    str | None, typer.Option(help="Where the heavy stages run: local (this process) or ray (docs/SCALE.md).")
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(help="--executor ray: 'auto' (the cluster of `ray start`), ray://HOST:10001, or unset: private."),
]


def executor_config(settings: dict[str, Any], kind: str | None, ray_address: str | None) -> ExecutorConfig:
    """Where the heavy stages run: the config file's ``executor`` mapping, ``--executor`` and ``--ray-address`` over
    it (an address alone means Ray); a wrong setting is a usage error."""
    from pydantic import ValidationError

    from curation.executors import ExecutorConfig

    where = dict(settings)
    if kind is not None:
        where["kind"] = kind
    if ray_address is not None:
        where["ray_address"] = ray_address
        where.setdefault("kind", "ray")
    try:
        return ExecutorConfig(**where)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"executor: {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc


def quiet_progress(quiet: bool) -> None:
    """``--quiet``: no progress bars (``REFINERY_PROGRESS=0``). Without one, the bars of Hugging Face and of the
    Argilla SDK are still turned off where Refinery's are off (no terminal, or ``REFINERY_PROGRESS=0``)."""
    if quiet:
        os.environ["REFINERY_PROGRESS"] = "0"
    if quiet or os.environ.get("REFINERY_PROGRESS", "1") in ("0", "false", "no") or not sys.stderr.isatty():
        # Hugging Face's own bars (weight loading, GGUF conversion) and the Argilla SDK's tqdm bar ("Sending
        # records...") would fill logs with carriage returns; set before those libraries are imported (they read
        # these once: tqdm's TQDM_* overrides at import)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")


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
    """Map library exceptions to a one-line message on stderr and the documented exit code; under --json also
    to one JSON object on stdout (see the module docstring)."""
    try:
        yield
    except typer.Exit:
        raise
    except usage_errors() as exc:
        _report("error", _one_line(exc), EXIT_USAGE)
        raise typer.Exit(EXIT_USAGE) from None
    except Failure as exc:
        _report("failed", _one_line(exc), EXIT_FAILED)
        raise typer.Exit(EXIT_FAILED) from None
    except Exception as exc:  # a full disk is no bug; DuckDB, pyarrow and torch report it in their own exceptions
        if not is_disk_full(exc):
            raise
        _report("failed", _one_line(disk_full_error(current_workspace_path(), exc)), EXIT_FAILED)
        raise typer.Exit(EXIT_FAILED) from None


def _report(prefix: str, message: str, exit_code: int) -> None:
    stderr.print(f"[red]{prefix}:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    if json_requested() and not json_emitted():
        emit_json({"error": message, "exit_code": exit_code})


def _one_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return " ".join(str(exc).split())


# ------------------------------------------------------------------------------------------ the root command

#: The parser's own usage errors (unknown option, missing argument, bad value): click's UsageError, the base of
#: the BadParameter that typer exports (typer vendors click in recent versions, so it is reached from there).
_PARSER_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class RefineryGroup(TyperGroup):
    """The ``refinery`` command itself (``typer.Typer(cls=RefineryGroup)``). Typer builds the click commands, then
    this gives every command and group below the root the global ``-q``/``--quiet`` as well (``refinery scan -q``
    works like ``refinery -q scan``), shows flags in --help without a ``<bool>`` placeholder, and notes --json
    before the arguments are parsed so that an argument the parser refuses is a JSON object under --json too."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        quiet = next((p for p in self.params if p.name == "quiet"), None)
        for command in _below(self):
            if quiet is not None and all(p.name != "quiet" for p in command.params):
                command.params.append(_quiet_for_every_command(quiet))
            _no_flag_placeholders(command.params, command.get_help_option(typer.Context(command)))

    def main(self, args: Sequence[str] | None = None, *rest: Any, **extra: Any) -> Any:
        start_session(as_json=_asks_for_json(sys.argv[1:] if args is None else args))
        return super().main(args, *rest, **extra)

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)  # the root's own, with what typer adds after __init__ (completion)
        _no_flag_placeholders(params, None)
        return params

    def make_context(self, *args: Any, **extra: Any) -> Any:
        with _parser_errors_as_json():
            return super().make_context(*args, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _parser_errors_as_json():
            return super().invoke(ctx)


def _below(group: Any) -> Iterator[Any]:
    for command in getattr(group, "commands", {}).values():
        yield command
        yield from _below(command)


def _quiet_for_every_command(root_option: Any) -> Any:
    """The root's --quiet, once more for a command: the same flags and help, acting as soon as it is parsed."""
    option = copy.copy(root_option)
    option.expose_value = False  # the command's function takes no such argument
    option.callback = _quiet_given
    return option


def _quiet_given(ctx: Any, param: Any, value: bool) -> bool:
    if value:
        quiet_progress(True)
    return value


def _no_flag_placeholders(params: Sequence[Any], help_option: Any) -> None:
    """A flag takes no value: an empty metavar keeps --help from showing ``<bool>`` beside it. ``help_option`` is
    a command's --help, which click makes on first use (made with a bare context by the caller)."""
    for option in [*params, *([help_option] if help_option is not None else [])]:
        if getattr(option, "is_flag", False) and not getattr(option, "count", False):
            option.metavar = ""


def _asks_for_json(args: Sequence[str]) -> bool:
    words = list(args)
    return "--json" in (words[: words.index("--")] if "--" in words else words)


@contextlib.contextmanager
def _parser_errors_as_json() -> Iterator[None]:
    try:
        yield
    except _PARSER_ERROR as exc:
        if json_requested() and not json_emitted():
            emit_json({"error": " ".join(exc.format_message().split()), "exit_code": EXIT_USAGE})  # type: ignore[attr-defined]
        raise
