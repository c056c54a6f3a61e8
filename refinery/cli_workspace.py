"""`refinery backup` and `refinery restore`: the whole workspace as one verified archive. Parsing and printing only
(the work is in refinery/backup.py).

Exit codes: 0 done; 1 an artifact folder named in the catalog is missing (backup), or the archive is damaged,
altered or holds an unsafe member (restore: nothing is written to DEST); 2 ARCHIVE exists already (backup), DEST
is not empty or the archive does not exist (restore).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from refinery.cli_context import cli_errors, current_workspace_path
from refinery.output import JsonOpt, emit_json, print_facts


def backup_command(
    archive: Annotated[Path, typer.Argument(help="The .tar.gz to write (must not exist).")],
    as_json: JsonOpt = False,
) -> None:
    """Write the catalog (copied under its lock) and every artifact it names into one .tar.gz with a manifest
    of sha256s; written to a temporary file and renamed when complete."""
    with cli_errors():
        from refinery.backup import backup
        from refinery.workspace import Workspace

        result = backup(Workspace(current_workspace_path()), archive)
        payload = result.to_json()
        emit_json(payload) if as_json else print_facts(payload, title="backup")


def restore_command(
    archive: Annotated[Path, typer.Argument(help="A .tar.gz written by `refinery backup`.")],
    dest: Annotated[Path, typer.Argument(help="The workspace folder to create (new or empty).")],
    as_json: JsonOpt = False,
) -> None:
    """Verify every file of a backup against its manifest and unpack it into a new workspace folder; nothing
    is written to DEST unless all of it verifies."""
    with cli_errors():
        from refinery.backup import restore

        result = restore(archive, dest)
        payload = result.to_json()
        emit_json(payload) if as_json else print_facts(payload, title="restored")


def register(app: typer.Typer) -> None:
    """Add `backup` and `restore` as top-level commands of ``app``; calling it again changes nothing."""
    present = {info.name for info in app.registered_commands}
    commands: dict[str, Callable[..., None]] = {"backup": backup_command, "restore": restore_command}
    for name, function in commands.items():
        if name not in present:
            app.command(name=name)(function)
