"""The ingest configuration: validated once, before any file is read.

Bad configuration fails early and loudly (``IngestConfigError``, which the CLI maps to exit status 2); bad
data never raises, it is quarantined row by row with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from schemas.errors import InputError
from schemas.records import BatchPurpose


class IngestConfigError(InputError, ValueError):
    """The ingest options or inputs cannot work (unknown format, bad mapping, missing file...)."""


#: Formats whose rows have a fixed shape (their fields are named by the format itself).
SHAPE_FORMATS = ("alpaca", "sharegpt", "openai", "oasst", "selfinstruct")
#: Container formats: how rows are stored; their shape comes from --map or from the keys of the rows.
CONTAINER_FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "hf")
FORMATS = ("auto", *SHAPE_FORMATS, *CONTAINER_FORMATS)
#: Roles a --map entry may give a column.
MAPPING_ROLES = ("system", "user", "assistant", "label", "metadata", "ignore")

DEFAULT_MAX_FIELD_CHARS = 200_000
#: Above this share of quarantined rows a batch is still stored, but the result says too_many_bad (the CLI exits 1).
DEFAULT_MAX_BAD_RATIO = 0.5


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class IngestOptions:
    """How `refinery ingest` reads its inputs. Every field carries its help text (``field_help``)."""

    format: str = field(
        default="auto",
        metadata=_help(
            "Input format: auto, alpaca, sharegpt, openai, oasst, selfinstruct (row shapes) or csv, tsv, json, "
            "jsonl, parquet, hf (containers whose shape comes from --map or from the keys of the first row)."
        ),
    )
    mapping: dict[str, str] = field(
        default_factory=dict,
        metadata=_help(
            "Column (or top-level field) -> role, roles: system, user, assistant, label, metadata, ignore. "
            "Several user columns are joined with a blank line; unmapped columns are kept as metadata."
        ),
    )
    template: str | None = field(
        default=None,
        metadata=_help(
            "A named prompt template (see curation.ingest.templates) or a format string whose {field} "
            "placeholders name input columns; {text} is the user content. Applied to the first user message."
        ),
    )
    name: str | None = field(default=None, metadata=_help("Batch name; defaults to the input file names."))
    eval_set: str | None = field(
        default=None,
        metadata=_help("Register the rows as the named eval set (purpose eval): prompt-only rows are allowed."),
    )
    max_field_chars: int = field(
        default=DEFAULT_MAX_FIELD_CHARS,
        metadata=_help("A text field longer than this many characters sends its row to quarantine."),
    )
    max_bad_ratio: float | None = field(
        default=DEFAULT_MAX_BAD_RATIO,
        metadata=_help(
            "When quarantined / rows read exceeds this ratio the batch is still stored, but the result says "
            "too_many_bad (the CLI exits 1). 1 (or None) accepts any share."
        ),
    )

    def __post_init__(self) -> None:
        # Normalise the mapping (strip, lower-case roles) while keeping its order: user columns join in order.
        cleaned = {str(k).strip(): str(v).strip().lower() for k, v in self.mapping.items()}
        object.__setattr__(self, "mapping", cleaned)
        problems = self._problems()
        if problems:
            raise IngestConfigError("invalid ingest options: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if self.format not in FORMATS:
            problems.append(f"unknown format {self.format!r} (choose from {', '.join(FORMATS)})")
        for column, role in self.mapping.items():
            if not column:
                problems.append("a --map entry has an empty column name")
            if role not in MAPPING_ROLES:
                problems.append(f"unknown role {role!r} for column {column!r} (roles: {', '.join(MAPPING_ROLES)})")
        if self.mapping:
            problems.extend(self._mapping_problems())
        elif self.format in ("csv", "tsv"):
            problems.append(f"format {self.format} needs --map COLUMN=user (and usually COLUMN=assistant)")
        if self.mapping and self.format in SHAPE_FORMATS:
            problems.append(f"--map does not apply to format {self.format}, whose fields are fixed")
        if self.max_field_chars < 1:
            problems.append(f"max_field_chars must be positive, got {self.max_field_chars}")
        if self.max_bad_ratio is not None and not 0.0 <= self.max_bad_ratio <= 1.0:
            problems.append(f"max_bad_ratio must be between 0 and 1, got {self.max_bad_ratio}")
        if self.eval_set is not None and not self.eval_set.strip():
            problems.append("eval_set must not be empty")
        if self.name is not None and not self.name.strip():
            problems.append("name must not be empty")
        if self.template is not None:
            from curation.ingest.templates import TemplateError, resolve_template

            try:
                resolve_template(self.template)
            except TemplateError as exc:
                problems.append(str(exc))
        return problems

    def _mapping_problems(self) -> list[str]:
        roles = list(self.mapping.values())
        problems = []
        if "user" not in roles:
            problems.append("--map needs at least one user column (e.g. --map text=user)")
        for single in ("assistant", "system", "label"):
            if roles.count(single) > 1:
                problems.append(f"--map gives the {single} role to more than one column")
        if self.eval_set is None and "assistant" not in roles and "label" not in roles:
            problems.append(
                "training data needs an assistant or label column in --map (prompt-only rows need --eval-set)"
            )
        return problems

    @property
    def purpose(self) -> BatchPurpose:
        return BatchPurpose.EVAL if self.eval_set is not None else BatchPurpose.TRAIN

    def columns_with(self, role: str) -> list[str]:
        return [column for column, r in self.mapping.items() if r == role]

    def identity(self) -> dict[str, Any]:
        """The options that decide what the batch contains (they enter the batch id); name and ratio do not."""
        from curation.ingest.templates import resolve_template

        template = resolve_template(self.template) if self.template is not None else None
        return {
            "format": self.format,
            # A list of pairs, not a dict: canonical JSON sorts keys, and user columns join in mapping order.
            "mapping": [[column, role] for column, role in self.mapping.items()],
            "template": None if template is None else {"name": template.name, "text": template.text},
            "purpose": self.purpose.value,
            "eval_set": self.eval_set,
            "max_field_chars": self.max_field_chars,
        }


def parse_mapping(entries: Iterable[str]) -> dict[str, str]:
    """``["text=user", "category=assistant"]`` -> ``{"text": "user", "category": "assistant"}`` (CLI --map)."""
    mapping: dict[str, str] = {}
    for entry in entries:
        column, sep, role = entry.rpartition("=")
        if not sep or not column.strip():
            raise IngestConfigError(f"--map expects COLUMN=ROLE, got {entry!r}")
        if column.strip() in mapping:
            raise IngestConfigError(f"--map names column {column.strip()!r} twice")
        mapping[column.strip()] = role.strip().lower()
    return mapping


def field_help() -> dict[str, str]:
    """Option name -> help text (the CLI uses it for --help)."""
    return {f.name: str(f.metadata.get("help", "")) for f in fields(IngestOptions)}
