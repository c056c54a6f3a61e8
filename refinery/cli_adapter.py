"""`refinery adapter merge` and `refinery generate`: use a trained adapter. Parsing and printing only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refinery.cli_context import cli_errors, current_workspace
from refinery.output import JsonOpt, emit_json, print_facts, stdout

ADAPTER_GROUP = "adapter"
GENERATE_COMMAND = "generate"

adapter_app = typer.Typer(help="Use trained adapters: merge one into its base model.", no_args_is_help=True)


@adapter_app.command("merge")
def adapter_merge(
    adapter_id: Annotated[str, typer.Argument(help="Adapter id (adp_...).")],
    out: Annotated[Path, typer.Argument(help="New folder for the merged model (must not exist).")],
    as_json: JsonOpt = False,
) -> None:
    """Fold an adapter into its base model: a standalone safetensors model folder with a verified manifest."""
    with cli_errors():
        from refinery.adapters import merge
        from schemas.manifest import load_manifest

        path = merge(current_workspace(), adapter_id, out)
        manifest = load_manifest(path, verify=False)  # merge() verified it already
        payload = {
            "adapter_id": adapter_id,
            "merged_id": manifest.id,
            "base_model_id": manifest.parents[1],
            "path": str(path),
            "files": len(manifest.files),
        }
        emit_json(payload) if as_json else print_facts(payload, title="merged model")


def generate_command(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    adapter: Annotated[str, typer.Option("--adapter", "-a", help="Adapter id (adp_...).")],
    system: Annotated[str | None, typer.Option("--system", help="System prompt put before the message.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate.")] = 128,
    base_only: Annotated[
        bool, typer.Option("--base-only", help="Answer with the adapter's base model alone (to compare).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Greedy answer to a prompt from base model + adapter (chat template applied)."""
    with cli_errors():
        from refinery.adapters import generate_text

        answer = generate_text(current_workspace(), adapter, prompt, system, max_new_tokens, base_only)
        if as_json:
            emit_json({"adapter_id": adapter, "prompt": prompt, "answer": answer, "base_only": base_only})
        else:
            stdout.print(answer, highlight=False, markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `adapter` group and the `generate` command to ``app`` (a second call changes nothing)."""
    if not any(group.name == ADAPTER_GROUP for group in app.registered_groups):
        app.add_typer(adapter_app, name=ADAPTER_GROUP)
    if not any(command.name == GENERATE_COMMAND for command in app.registered_commands):
        app.command(name=GENERATE_COMMAND)(generate_command)
