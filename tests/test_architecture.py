"""The architecture of docs/ARCHITECTURE.md, checked against the code.

1. The import rule between the packages: ``schemas`` imports none of the others; ``curation``, ``training`` and
   ``eval`` import only ``schemas``; ``refinery`` may import all. Every ``import`` and ``from ... import`` counts,
   at module level or inside a function or an ``if TYPE_CHECKING:`` block, relative ones resolved, plus
   ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name. The files are parsed, never
   imported, so the Argilla server's modules (``curation/review/launcher.py``, ``sql_search.py``) count too.
2. Two rules inside the packages that the restructuring rests on: curation's shared machinery (``similarity/``,
   ``embeddings/``) imports no other curation folder, and the CLI's shared modules import no command module.
3. The check registry: every check is declared next to its code and registered, and its spec holds what the
   runner reads (``run``, ``config`` with ``preset`` and ``rename``, ``needs``).

The checker itself is tested on synthetic sources that break the rule: a test that cannot fail checks nothing.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import tomllib
import typing
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from curation.checks.pii import PiiConfig
from curation.checks.registry import CHECKS, SPECS, resolve_checks
from curation.checks.runner import enforce_contract
from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Needs, ScanError, ScanRecord
from curation.similarity.exact import KeepRank

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "curation", "training", "eval", "refinery")
#: package -> the other packages it may import (third-party libraries and the standard library are not limited).
ALLOWED: dict[str, frozenset[str]] = {
    "schemas": frozenset(),
    "curation": frozenset({"schemas"}),
    "training": frozenset({"schemas"}),
    "eval": frozenset({"schemas"}),
    "refinery": frozenset(PACKAGES) - {"refinery"},
}
#: curation folders that serve the others and import none of them.
CURATION_LEAVES = ("similarity", "embeddings", "executors")
#: The one curation folder the other leaves may import: where heavy stages run (it imports no curation folder).
CURATION_BASE = "executors"
#: refinery modules every CLI command module imports; they import no command module (no import circle).
CLI_SHARED = ("refinery.cli_context", "refinery.errors", "refinery.output", "refinery.workspace")


# ------------------------------------------------------------------------------------------ the import scanner


@dataclass(frozen=True)
class Imported:
    where: str  # path:line
    importer: str  # dotted name of the importing module
    module: str  # dotted name of the module the statement names (relative imports resolved)
    names: tuple[str, ...] = ()  # what `from module import ...` takes (each may be a submodule)

    def candidates(self) -> list[str]:
        """The module and, for ``from m import x``, ``m.x`` (x may be a submodule: ``from refinery import cli``)."""
        return [self.module, *(f"{self.module}.{name}" for name in self.names if name != "*")]


class ImportProblem(ValueError):
    """An import the scanner cannot resolve (a relative import above the top-level package)."""


def module_of(relative: str) -> tuple[str, bool]:
    """(dotted module name, is it a package's ``__init__``) of a path relative to the repository root."""
    parts = list(Path(relative).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _absolute(node: ast.ImportFrom, module: str, is_package: bool, where: str) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 >= len(package):
        raise ImportProblem(f"{where}: relative import (level {node.level}) above the top-level package")
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _literal_dynamic_import(node: ast.Call) -> str | None:
    """The module of ``importlib.import_module("x")``, ``import_module("x")`` or ``__import__("x")``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_of(relative: str, source: str) -> list[Imported]:
    """Every import of ``source`` (the file at ``relative``), wherever the statement stands, in line order."""
    module, is_package = module_of(relative)
    nodes = sorted(
        (
            n
            for n in ast.walk(ast.parse(source, filename=relative))
            if isinstance(n, ast.Import | ast.ImportFrom | ast.Call)
        ),
        key=lambda n: (n.lineno, n.col_offset),
    )
    found = []
    for node in nodes:
        where = f"{relative}:{node.lineno}"
        if isinstance(node, ast.Import):
            found += [Imported(where, module, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = tuple(alias.name for alias in node.names)
            found.append(Imported(where, module, _absolute(node, module, is_package, where), names))
        else:
            dynamic = _literal_dynamic_import(node)
            if dynamic is not None:
                found.append(Imported(where, module, dynamic))
    return found


def top_level(module: str) -> str:
    return module.split(".", 1)[0]


def rule_violations(imports: Sequence[Imported]) -> list[str]:
    """``path:line: <package> imports <module> (<package> may import only ...)`` for every import across the rule."""
    problems = []
    for imp in imports:
        importer, imported = top_level(imp.importer), top_level(imp.module)
        if importer not in ALLOWED or imported not in ALLOWED or imported == importer:
            continue
        if imported not in ALLOWED[importer]:
            allowed = sorted(ALLOWED[importer])
            may = f"only {', '.join(allowed)}" if allowed else "none of the other packages"
            problems.append(f"{imp.where}: {importer} imports {imp.module} ({importer} may import {may})")
    return problems


def package_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def tree_imports() -> list[Imported]:
    found: list[Imported] = []
    for path in package_files():
        found += imports_of(path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8"))
    return found


TREE = tree_imports()


# ------------------------------------------------------------------------------------------ the rule, in the tree


def test_no_package_imports_across_the_rule() -> None:
    problems = rule_violations(TREE)
    assert problems == [], "imports across the package rule (docs/ARCHITECTURE.md):\n" + "\n".join(problems)


def test_the_scan_sees_the_whole_tree() -> None:
    """The scanner reads every package, lazy imports included: the allowed edges it must see are there."""
    assert len(package_files()) >= 100
    edges = {(top_level(i.importer), top_level(i.module)) for i in TREE}
    assert {(package, package) for package in PACKAGES} <= edges  # each package's modules import each other
    assert {("curation", "schemas"), ("training", "schemas"), ("eval", "schemas")} <= edges
    assert {("refinery", "curation"), ("refinery", "training"), ("refinery", "eval")} <= edges
    lazy = [i for i in TREE if i.where.startswith("refinery/pipeline.py") and i.module == "training.recipe"]
    assert lazy, "refinery/pipeline.py imports training.recipe inside train_adapter: the scanner missed it"


def test_curation_leaves_import_no_other_curation_folder() -> None:
    problems = []
    for imp in TREE:
        parts = imp.importer.split(".")
        if parts[0] != "curation" or len(parts) < 2 or parts[1] not in CURATION_LEAVES:
            continue
        for module in imp.candidates():
            target = module.split(".")
            if target[0] == "curation" and len(target) > 1 and target[1] != parts[1]:
                if target[1] == CURATION_BASE and parts[1] != CURATION_BASE:
                    continue
                problems.append(f"{imp.where}: curation/{parts[1]} imports {module}")
    assert problems == []


def test_the_cli_has_no_import_circle() -> None:
    """Command modules (``refinery/cli_*.py``) are imported by ``refinery.cli`` only; the modules they share
    import neither ``refinery.cli`` nor a command module; nothing outside refinery/cli.py imports refinery.cli."""
    shared = set(CLI_SHARED)
    commands = {module_of(p.relative_to(ROOT).as_posix())[0] for p in (ROOT / "refinery").glob("cli_*.py")} - shared
    assert "refinery.cli_snapshot" in commands and "refinery.cli_context" not in commands
    problems = []
    for imp in TREE:
        for module in imp.candidates():
            if module in commands and imp.importer != "refinery.cli":
                problems.append(f"{imp.where}: {imp.importer} imports the command module {module}")
            if module == "refinery.cli" and imp.importer != "refinery.cli":
                problems.append(f"{imp.where}: {imp.importer} imports refinery.cli")
    assert problems == []


# ------------------------------------------------------------------------------------------ the checker itself


VIOLATING = '''\
"""A curation module that breaks the rule in every way the scanner must see."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import evaluate
import numpy
import schemas_extra
from schemas.ids import sha256_text
from eval.runner import run_eval

if TYPE_CHECKING:
    from refinery.workspace import Workspace


def lazy() -> None:
    import training.recipe

    class Inner:
        def method(self) -> None:
            from refinery import cli

    importlib.import_module("eval.gate")
    importlib.import_module(name_from_config)
'''


def test_the_checker_names_every_crossing_import_with_file_and_line() -> None:
    """Top level, TYPE_CHECKING, function and nested-class level, a literal import_module; not ``evaluate`` nor
    ``schemas_extra`` (other distributions whose names start like a package), nor a name known only at run time."""
    assert rule_violations(imports_of("curation/checks/bad.py", VIOLATING)) == [
        "curation/checks/bad.py:11: curation imports eval.runner (curation may import only schemas)",
        "curation/checks/bad.py:14: curation imports refinery.workspace (curation may import only schemas)",
        "curation/checks/bad.py:18: curation imports training.recipe (curation may import only schemas)",
        "curation/checks/bad.py:22: curation imports refinery (curation may import only schemas)",
        "curation/checks/bad.py:24: curation imports eval.gate (curation may import only schemas)",
    ]


def test_the_same_source_is_judged_by_the_package_it_sits_in() -> None:
    assert rule_violations(imports_of("refinery/fine.py", VIOLATING)) == []  # refinery may import all
    in_training = rule_violations(imports_of("training/bad.py", VIOLATING))
    assert [p.split(": ", 1)[1].split(" (")[0] for p in in_training] == [
        "training imports eval.runner",
        "training imports refinery.workspace",
        "training imports refinery",
        "training imports eval.gate",
    ]  # training.recipe is its own package
    in_schemas = rule_violations(imports_of("schemas/bad.py", VIOLATING))
    assert len(in_schemas) == 5 and all(
        p.endswith("(schemas may import none of the other packages)") for p in in_schemas
    )


def test_relative_imports_are_resolved_against_the_file() -> None:
    def targets(relative: str, source: str) -> list[list[str]]:
        return [i.candidates() for i in imports_of(relative, source)]

    assert targets("curation/checks/pii.py", "from .spec import Finding") == [
        ["curation.checks.spec", "curation.checks.spec.Finding"]
    ]
    assert targets("curation/checks/pii.py", "from ..similarity import knn") == [
        ["curation.similarity", "curation.similarity.knn"]
    ]
    assert targets("curation/checks/__init__.py", "from . import registry") == [
        ["curation.checks", "curation.checks.registry"]
    ]
    assert targets("curation/__init__.py", "from .checks.spec import X") == [
        ["curation.checks.spec", "curation.checks.spec.X"]
    ]
    assert rule_violations(imports_of("curation/checks/pii.py", "from ..similarity import knn")) == []
    with pytest.raises(ImportProblem, match=r"schemas/ids.py:1: relative import \(level 2\) above"):
        imports_of("schemas/ids.py", "from ..eval import runner")


# ------------------------------------------------------------------------------------------ the check registry


def _check_modules() -> list[str]:
    """Every module of curation/checks/ (the registry imports the ones with a spec)."""
    return sorted(f"curation.checks.{p.stem}" for p in (ROOT / "curation" / "checks").glob("*.py"))


def _declared() -> dict[int, str]:
    """id(spec) -> the module that declares it (as ``SPEC`` or in ``SPECS``)."""
    found: dict[int, str] = {}
    for name in _check_modules():
        if name == "curation.checks.registry":
            continue
        module = importlib.import_module(name)
        specs = [getattr(module, "SPEC", None), *getattr(module, "SPECS", ())]
        for spec in specs:
            if isinstance(spec, CheckSpec):
                found[id(spec)] = name
    return found


def test_every_declared_spec_is_registered_and_declared_next_to_its_code() -> None:
    declared = _declared()
    registered = {id(spec) for spec in SPECS}
    forgotten = sorted(f"{declared[i]}" for i in set(declared) - registered)
    assert forgotten == [], "declares a SPEC that curation/checks/registry.py does not list"
    assert registered <= set(declared), "a registered spec is declared outside its check module"
    for spec in SPECS:
        assert spec.run.__module__ == declared[id(spec)], f"{spec.name}: runs code of another module"
    assert sorted(CHECKS) == sorted(spec.name for spec in SPECS), "two specs share a name"


#: The pip extras pyproject.toml declares (what a check's ``needs.extra`` may name).
EXTRAS = frozenset(
    tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
)


def spec_problems(spec: CheckSpec, extras: Collection[str] = EXTRAS) -> list[str]:
    """What in ``spec`` the runner (``resolve_checks``, ``scan_config``, ``run_scan``) could not use as declared."""
    problems = []
    try:  # run_scan calls run(records, CheckContext(catalog, config))
        inspect.signature(spec.run).bind([], CheckContext())
    except TypeError:
        problems.append("run cannot be called as run(records, ctx)")
    if spec.config is None:  # resolve_checks applies preset and rename only to a check with a config
        if spec.preset or spec.rename is not None:
            problems.append("preset or rename without a config: never applied")
    elif set(spec.preset) - set(spec.config.model_fields):
        problems.append(
            f"preset names options its config lacks: {sorted(set(spec.preset) - set(spec.config.model_fields))}"
        )
    if spec.needs.embedding_model and (spec.config is None or "model" not in spec.config.model_fields):
        problems.append("needs an embedding model but its config has no `model` option for the scan id")
    if bool(spec.needs.modules) != (spec.needs.extra is not None):
        problems.append("needs modules without the extra that installs them, or an extra without modules")
    if spec.needs.extra is not None and spec.needs.extra not in extras:
        problems.append(f"no extra {spec.needs.extra!r} in pyproject.toml")
    if not all(part.isidentifier() for module in spec.needs.modules for part in module.split(".")):
        problems.append(f"needs a module that is no module name: {spec.needs.modules}")
    if spec.default and spec.needs.embedding_model and not spec.needs.modules:
        # a scan that names no checks leaves out a default check whose modules are missing (registry.default_checks):
        # one that needs a model but names no module would fail every default scan on a machine without it
        problems.append("a default check (run by a scan that names none) needs a model but names no modules")
    return [f"{spec.name}: {p}" for p in problems]


def test_every_spec_holds_what_the_runner_reads() -> None:
    assert [p for spec in SPECS for p in spec_problems(spec)] == []
    assert any(spec.needs.extra for spec in SPECS) and any(spec.preset for spec in SPECS)  # both are exercised


def _no_context(records: Sequence[ScanRecord]) -> CheckOutput:
    return CheckOutput([])


def test_the_spec_checker_reports_what_the_runner_could_not_use() -> None:
    pii = CHECKS["pii"]
    outlier = CHECKS["outlier"]
    broken = [
        replace(pii, run=_no_context),  # type: ignore[arg-type]
        replace(CHECKS["empty_response"], preset={"threshold": 0.5}),
        replace(pii, preset={"treshold": 0.5}),
        replace(outlier, config=PiiConfig),
        replace(outlier, needs=Needs(embedding_model=True, modules=("torch",))),
        replace(outlier, needs=Needs(embedding_model=True, modules=("torch",), extra="embeddings")),
        replace(pii, needs=Needs(modules=("not a module",), extra="embed")),
        replace(outlier, needs=Needs(embedding_model=True)),
    ]
    assert [spec_problems(spec) for spec in broken] == [
        ["pii: run cannot be called as run(records, ctx)"],
        ["empty_response: preset or rename without a config: never applied"],
        ["pii: preset names options its config lacks: ['treshold']"],
        ["outlier: needs an embedding model but its config has no `model` option for the scan id"],
        ["outlier: needs modules without the extra that installs them, or an extra without modules"],
        ["outlier: no extra 'embeddings' in pyproject.toml"],
        ["pii: needs a module that is no module name: ('not a module',)"],
        ["outlier: a default check (run by a scan that names none) needs a model but names no modules"],
    ]


def _literal_choices(spec: CheckSpec) -> list[dict[str, object]]:
    """Every combination of the values of the config's Literal options (what a rename may depend on)."""
    assert spec.config is not None
    fields = {
        name: typing.get_args(info.annotation)
        for name, info in spec.config.model_fields.items()
        if typing.get_origin(info.annotation) is typing.Literal
    }
    return [dict(zip(fields, values, strict=True)) for values in itertools.product(*fields.values())]


@pytest.mark.parametrize("spec", [s for s in SPECS if s.rename is not None], ids=lambda s: s.name)
def test_every_name_a_check_resolves_to_is_a_registered_check(spec: CheckSpec) -> None:
    """run_scan looks each resolved name up in CHECKS (its run, its needs, the scan id): a rename must land on a
    registered check that runs the same function with the same config, and the spec's own preset on itself."""
    if spec.needs.missing():
        pytest.skip(f"{spec.name} needs {spec.needs.missing()}")
    targets = set()
    for choice in _literal_choices(spec):
        try:
            resolved = resolve_checks([spec.name], {spec.name: choice} if choice else None)
        except ScanError:
            continue  # a combination the check refuses (near_dup_prompt with scope 'pair')
        for target in resolved:
            assert target in CHECKS, f"{spec.name} with {choice} resolves to {target!r}, which is no registered check"
            assert CHECKS[target].run is spec.run and CHECKS[target].config is spec.config, target
            targets.add(target)
    assert spec.name in targets and list(resolve_checks([spec.name])) == [spec.name]


def _records() -> list[ScanRecord]:
    rows = [
        ("How do I reset my password?", "Open the settings and choose reset.", "account"),
        ("how do i reset my password", "Open the settings and choose reset.", "account"),
        ("What is the capital of France?", "", "geo"),
        ("Write to john.smith@gmail.com please", "Sure, I will write to him and", "mail"),
    ]
    return [
        ScanRecord(f"r{i}", prompt, response, label, KeepRank(1, 0.0, ("2026-01-01T00:00:00", i, 0), f"r{i}"))
        for i, (prompt, response, label) in enumerate(rows)
    ]


@pytest.mark.parametrize(
    "name", [s.name for s in SPECS if not s.needs.eval_sets and not s.needs.embedding_model and not s.needs.modules]
)
def test_checks_without_eval_sets_or_models_meet_the_contract_on_a_tiny_set(name: str) -> None:
    """Resolved and run as run_scan does (without a catalog), each output holds to the runner's contract."""
    records = _records()
    for target, config in resolve_checks([name]).items():
        output = CHECKS[target].run(records, CheckContext(None, config))
        enforce_contract(target, records, output)
