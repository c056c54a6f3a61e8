"""The docs tell the truth about the code, checked against the code itself (in the spirit of sqlite-utils'
tests/test_docs.py): every `refinery ...` command and option the README and docs/ name exists, every command is in
the README's CLI reference and takes --json, every catalog table and view of a fresh catalog is in
docs/CATALOG.md, every REFINERY_* variable the code reads is documented (and every documented one is read), and the
training config example in docs/TRAINING.md is what it says it is.

The truth comes from the code (the Typer app, a migrated catalog, the package sources), so new commands, options,
tables and variables are checked as soon as they exist, without editing this file.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command

from refinery.cli import app
from schemas.catalog import Catalog

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("schemas", "curation", "training", "eval", "refinery")
GLOBAL_OPTIONS = {"--workspace": True, "-w": True, "--quiet": False, "-q": False, "--help": False}
PLACEHOLDERS = {"...", "…"}


# ------------------------------------------------------------------------------------------ the CLI, from code


def _commands() -> dict[tuple[str, ...], Any]:
    """Every command and group (click objects, as Typer builds them) by path (``("snapshot", "diff")``); the root
    is ``()``."""
    found: dict[tuple[str, ...], Any] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found[path] = command
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(get_command(app), ())
    return found


def _is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


COMMANDS = _commands()
LEAVES = {path: cmd for path, cmd in COMMANDS.items() if path and not _is_group(cmd)}


def _options(command: Any) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")}


# ------------------------------------------------------------------------------------------ mentions in the docs


@dataclass(frozen=True)
class Mention:
    where: str  # file:line
    text: str  # what follows `refinery`


def _code_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Lines of fenced code blocks (continuations joined) and inline code spans, with their line numbers."""
    fenced = False
    pending: tuple[int, str] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            start, text = pending if pending else (number, "")
            text += " " + line.strip().removeprefix("$ ")
            if text.endswith("\\"):
                pending = (start, text[:-1])
                continue
            pending = None
            yield start, text.strip()
        else:
            for span in re.findall(r"`([^`\n]+)`", line):
                yield number, span.strip()


def mentions() -> list[Mention]:
    """Every `refinery <something>` in a code span or at the start of a line of a code block."""
    found = []
    for path in DOCS:
        for number, text in _code_lines(path):
            if text.startswith("refinery "):
                found.append(Mention(f"{path.relative_to(ROOT)}:{number}", text.removeprefix("refinery ").strip()))
    return found


def _alternatives(text: str) -> list[str]:
    """``a [x \\| y] \\| b`` -> ``["a [x \\| y]", "b"]``: split at a `|` (or markdown's `\\|`) between spaces,
    outside brackets; ``--format jsonl|hf`` stays whole."""
    parts, depth, start = [], 0, 0
    for match in re.finditer(r"[\[\]]|\s\\?\|\s", text):
        token = match.group()
        if token == "[":
            depth += 1
        elif token == "]":
            depth = max(0, depth - 1)
        elif depth == 0:
            parts.append(text[start : match.start()])
            start = match.end()
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _tokens(text: str) -> list[str]:
    """Shell words without markdown brackets and escapes; a `#` ends the command."""
    cleaned = text.replace("\\|", "|").replace("[", " ").replace("]", " ")
    try:
        words = shlex.split(cleaned, comments=True)
    except ValueError:  # an unbalanced quote in prose: plain words will do for options
        words = cleaned.split()
    return words


@dataclass
class Resolved:
    path: tuple[str, ...]
    options: list[str]


def resolve(text: str) -> tuple[list[Resolved], list[str]]:
    """The commands a mention names with the options given to each, and the problems found."""
    problems: list[str] = []
    resolved: list[Resolved] = []
    group: tuple[str, ...] = ()
    for n, alternative in enumerate(_alternatives(text)):
        words = _tokens(alternative)
        while words and words[0] in GLOBAL_OPTIONS:
            words = words[2:] if GLOBAL_OPTIONS[words[0]] else words[1:]
        if not words:
            continue
        if n > 0 and words[0].startswith("-") and resolved:  # `--source FILE | --record ID`: same command
            resolved[-1].options += [w for w in words if w.startswith("-")]
            continue
        path: tuple[str, ...] = group if n > 0 else ()  # `serve | stop`: a sibling in the same group
        rest = list(words)
        while rest and not rest[0].startswith("-") and _is_group(COMMANDS.get(path)):
            word = rest.pop(0)
            if word in PLACEHOLDERS:
                break
            if (*path, word) not in COMMANDS:
                problems.append(f"no command `refinery {' '.join((*path, word))}`")
                path = ()
                break
            path = (*path, word)
        if not path:
            continue
        group = path[:-1] if path in LEAVES else path
        resolved.append(Resolved(path, [w for w in rest if w.startswith("-") and len(w) > 1]))
    for item in resolved:
        known = _options(COMMANDS[item.path]) | set(GLOBAL_OPTIONS)
        for option in item.options:
            name = option.split("=", 1)[0].rstrip(",.;:")
            if name not in known:
                problems.append(f"`refinery {' '.join(item.path)}` has no option {name}")
    return resolved, problems


def test_every_command_and_option_the_docs_name_exists() -> None:
    found = mentions()
    assert len(found) > 50, "the parser found too few mentions: is it still reading the docs?"
    problems = [f"{m.where}: {p}" for m in found for p in resolve(m.text)[1]]
    assert problems == []


def test_the_mention_parser_catches_what_it_should() -> None:
    """The checker itself: real names pass, invented ones are reported (a test that cannot fail checks nothing)."""
    ok = resolve("snapshot export ID OUT --format jsonl|hf [--split S] \\| diff A B [--json]")
    assert [r.path for r in ok[0]] == [("snapshot", "export"), ("snapshot", "diff")] and ok[1] == []
    assert resolve("forget --source FILE | --record ID [--reason TEXT]")[1] == []
    assert resolve("--workspace ws -q review serve [--port 6900] \\| stop")[1] == []
    assert resolve("review ...")[1] == [] and resolve("promote adp_... # --nonsense in a comment")[1] == []
    assert resolve("snapshot frobnicate ID")[1] == ["no command `refinery snapshot frobnicate`"]
    assert resolve("scan [--threshold 0.7] [--nope 3]")[1] == ["`refinery scan` has no option --nope"]
    typo = resolve("review status \\| calibrate [--budgt N]")[1]
    assert typo == ["`refinery review calibrate` has no option --budgt"]


# ------------------------------------------------------------------------------------------ the CLI reference


def _reference_rows() -> list[str]:
    """The first cell of every row of the README's CLI reference table."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## CLI reference", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\| `refinery ([^`]+)` \|", section, flags=re.MULTILINE)]


def test_every_command_is_in_the_cli_reference() -> None:
    rows = _reference_rows()
    documented = {r.path for row in rows for r in resolve(row)[0]}
    missing = sorted(" ".join(path) for path in LEAVES if path not in documented)
    assert missing == [], f"commands missing from the README's CLI reference: {missing}"


def test_every_command_takes_json_as_the_readme_says() -> None:
    assert "Every command takes `--json`" in (ROOT / "README.md").read_text(encoding="utf-8")
    without = sorted(" ".join(path) for path, command in LEAVES.items() if "--json" not in _options(command))
    assert without == []


# ------------------------------------------------------------------------------------------ the catalog


def test_every_catalog_table_view_and_macro_is_in_catalog_md(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.duckdb")
    catalog.migrate()
    names = {
        r["name"]
        for r in catalog.query(
            "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'main' "
            "UNION SELECT function_name FROM duckdb_functions() WHERE NOT internal AND function_type LIKE '%macro'"
        )
    }
    assert {"records", "quarantine", "eval_gate", "adapter_data_diff"} <= names  # the query sees all three kinds
    text = (ROOT / "docs" / "CATALOG.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`([a-z_][a-z0-9_]*)", text))
    assert sorted(names - documented) == []


# ------------------------------------------------------------------------------------------ environment variables


def _variables(texts: Iterator[str]) -> set[str]:
    return {name for text in texts for name in re.findall(r"\bREFINERY_[A-Z0-9]+(?:_[A-Z0-9]+)*\b", text)}


def test_every_refinery_variable_the_code_reads_is_documented_and_no_other() -> None:
    sources = (p.read_text(encoding="utf-8") for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")))
    in_code = _variables(sources)
    in_docs = _variables(p.read_text(encoding="utf-8") for p in DOCS)
    assert {"REFINERY_WORKSPACE", "REFINERY_PROGRESS"} <= in_code
    assert sorted(in_code - in_docs) == [], "read by the code, documented nowhere in README.md or docs/"
    assert sorted(in_docs - in_code) == [], "documented, but no code reads it"


# ------------------------------------------------------------------------------------------ config examples


def test_the_training_config_example_is_the_defaults() -> None:
    from training.config import TrainConfig

    text = (ROOT / "docs" / "TRAINING.md").read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1]
    assert "at their defaults" in section.split("```", 1)[0]
    example = yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])
    assert len(example) >= 10 and TrainConfig.model_validate(example) == TrainConfig()


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_docs_name_no_refinery_schema_command_that_does_not_exist(path: Path) -> None:
    """`refinery schema` alone is a group: a doc pointing there must name `schema export`."""
    text = path.read_text(encoding="utf-8")
    assert "`refinery schema`" not in text
