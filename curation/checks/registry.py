"""The registry: every check's :class:`~curation.checks.spec.CheckSpec`, in one tuple, and what is derived from
them (the default checks, the snapshot policy's default lists, the reviewer guides, the scan config schema).

Adding a check is one module with its function, config and ``SPEC``, one line in :data:`SPECS`, and one test.
The order of :data:`SPECS` is the order of every derived list; snapshot ids hash the policy's lists, so a new
check goes where it keeps the existing lists as they are (tests/curation/test_check_registry.py pins them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from curation.checks import (
    contamination,
    empty_response,
    exact,
    exact_prompt,
    inconsistency,
    label_issue,
    length,
    near_dup,
    near_dup_eval,
    outlier,
    pii,
    refusal,
    repetitive,
    semantic_dup,
    truncated,
)
from curation.checks.spec import CheckSpec, ScanError

#: Every check, duplicates first, then the response heuristics, PII, contamination and the embedding checks.
SPECS: tuple[CheckSpec, ...] = (
    exact.SPEC,
    exact_prompt.SPEC,
    *near_dup.SPECS,
    empty_response.SPEC,
    truncated.SPEC,
    repetitive.SPEC,
    length.SPEC,
    refusal.SPEC,
    pii.SPEC,
    near_dup_eval.SPEC,
    contamination.SPEC,
    outlier.SPEC,
    inconsistency.SPEC,
    semantic_dup.SPEC,
    label_issue.SPEC,
)
#: name -> spec: what `refinery scan` can run.
CHECKS: dict[str, CheckSpec] = {spec.name: spec for spec in SPECS}
#: What a scan that names no checks runs: the duplicate, heuristic, PII and contamination checks and the embedding
#: checks (the embedding ones only where the ``embed`` extra is installed: :func:`default_checks`).
DEFAULT_CHECKS: tuple[str, ...] = tuple(spec.name for spec in SPECS if spec.default)
#: Checks whose flag holds a record out of a snapshot until a human approves it.
BLOCKING_CHECKS: tuple[str, ...] = tuple(spec.name for spec in SPECS if spec.blocks_snapshot)
#: Duplicate checks whose removed (non-kept) members snapshots leave out.
DUPLICATE_CHECKS: tuple[str, ...] = tuple(spec.name for spec in SPECS if spec.removes_duplicates)
#: Duplicate checks whose clusters a snapshot keeps within one split.
SPLIT_GROUP_CHECKS: tuple[str, ...] = tuple(spec.name for spec in SPECS if spec.groups_splits)
#: What an annotator reads for a check without a guide of its own.
GENERIC_GUIDE = "flagged by this check; the findings field says why."


def guide(check: str) -> str:
    """What a flag of ``check`` means for an annotator (the review guidelines)."""
    spec = CHECKS.get(check)
    return (spec.guide if spec is not None else None) or GENERIC_GUIDE


def default_checks(config: dict[str, dict[str, Any]] | None = None) -> tuple[list[str], dict[str, str]]:
    """What a scan that names no checks runs: :data:`DEFAULT_CHECKS` plus the checks ``config`` configures, and the
    default checks left out -> why (their optional dependency cannot be imported: the embedding checks without the
    ``embed`` extra). A check named in ``config`` is never left out: it fails in :func:`resolve_checks` instead."""
    left_out: dict[str, str] = {}
    for name in DEFAULT_CHECKS:
        spec = CHECKS[name]
        missing = spec.needs.missing()
        if missing and name not in (config or {}):
            install = f": pip install 'refinery[{spec.needs.extra}]'" if spec.needs.extra else ""
            left_out[name] = f"not run: needs {', '.join(missing)}, which cannot be imported{install}"
    names = [name for name in dict.fromkeys([*DEFAULT_CHECKS, *(config or {})]) if name not in left_out]
    return names, left_out


def check_configs() -> dict[str, type[BaseModel]]:
    """name -> config model, for the checks that take options (the `scan --config` schema)."""
    return {name: spec.config for name, spec in CHECKS.items() if spec.config is not None}


def resolve_checks(
    checks: Sequence[str], config: dict[str, dict[str, Any]] | None = None
) -> dict[str, BaseModel | None]:
    """Validate the checks and their config up front; return check name -> validated config (or None).

    Fails on unknown checks, config for a check that does not run or takes none, invalid values and a missing
    optional dependency, naming every problem at once, before any work. A spec's ``rename`` says where results go
    (``near_dup`` with ``scope: prompt`` resolves to ``near_dup_prompt``: results are stored and reported under the
    name that says what they mean); its ``preset`` fills in the config values its name implies.
    """
    config = config or {}
    problems = [f"unknown check {c!r}" for c in checks if c not in CHECKS]
    problems += [f"config for {c!r}, which is not among the checks run" for c in config if c not in checks]
    resolved: dict[str, BaseModel | None] = {}
    for name in dict.fromkeys(checks):
        spec = CHECKS.get(name)
        if spec is None:
            continue
        missing = spec.needs.missing()
        if missing:
            install = f": pip install 'refinery[{spec.needs.extra}]'" if spec.needs.extra else ""
            problems.append(f"check {name!r} needs {', '.join(missing)}, which cannot be imported{install}")
            continue
        if spec.config is None:
            if config.get(name):
                problems.append(f"check {name!r} takes no config")
            resolved[name] = None
            continue
        values = {**spec.preset, **(config.get(name) or {})}
        try:
            validated = spec.config.model_validate(values)
            target = spec.rename(name, validated) if spec.rename is not None else name
        except (ValidationError, ValueError) as exc:
            problems.append(f"config of {name!r}: {exc}")
            continue
        if target in resolved:
            problems.append(f"check {target!r} requested twice")
        resolved[target] = validated
    if problems:
        raise ScanError("; ".join(problems) + f" (available checks: {', '.join(sorted(CHECKS))})")
    return resolved
