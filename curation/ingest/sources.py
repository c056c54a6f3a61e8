"""Planning: which container and row shape each input has, checked against the options before any write.

``--format auto`` detects the container by extension (or by the first byte: ``[`` is a JSON array) and the
row shape by the keys of the first parseable row: replies/message_tree_id -> oasst, conversations ->
sharegpt, messages -> openai, instances -> selfinstruct, instruction + output -> alpaca, turns -> turns
(prompt-only). A folder with dataset_info.json / state.json / dataset_dict.json is a saved Hugging Face
dataset; any other folder is a folder of shards: its data files, in name order (:func:`shard_files`). CSV and TSV
always need ``--map``; Parquet and datasets need it unless their columns name a shape.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from curation.ingest.options import SHAPE_FORMATS, IngestConfigError, IngestOptions
from curation.ingest.table_readers import first_hf_row, hf_parts, is_saved_dataset, parquet_columns
from curation.ingest.templates import resolve_template
from curation.ingest.text_readers import ReadPosition, first_significant_byte, read_csv_header, read_jsonl
from schemas.ids import canonical_json, sha256_file, sha256_text, sha256_tree

_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
#: How many leading lines of a JSON Lines file may be malformed before detection gives up.
_DETECT_LINES = 1000


@dataclass(frozen=True)
class SourcePlan:
    """One input to read: a file, a saved dataset, or one split of a saved DatasetDict."""

    path: Path
    label: str  # recorded as the `file` of its source and quarantined rows
    container: str  # jsonl, json, csv, tsv, parquet, hf
    shape: str  # alpaca, sharegpt, openai, oasst, selfinstruct, turns, mapped, undetected
    sha256: str
    size: int
    mapping: dict[str, str] = field(default_factory=dict)
    split: str | None = None

    @property
    def format(self) -> str:
        """The format recorded on source rows: the shape, or the container for mapped rows."""
        return self.container if self.shape in ("mapped", "undetected") else self.shape


def shape_from_keys(keys: Iterable[Any]) -> str | None:
    found = {str(k) for k in keys}
    if "replies" in found or "message_tree_id" in found:
        return "oasst"
    for key, shape in (("conversations", "sharegpt"), ("messages", "openai"), ("instances", "selfinstruct")):
        if key in found:
            return shape
    if "instruction" in found and "output" in found:
        return "alpaca"
    if "turns" in found:
        return "turns"
    return None


def plan_sources(paths: list[Path], options: IngestOptions) -> list[SourcePlan]:
    if not paths:
        raise IngestConfigError("no input files given")
    resolved = [Path(p).expanduser().resolve() for p in paths]
    for original, path in zip(paths, resolved, strict=True):
        if not path.exists():
            raise IngestConfigError(f"no such file or folder: {original}")
        if resolved.count(path) > 1:
            raise IngestConfigError(f"{original} is given more than once")
    plans: list[SourcePlan] = []
    for path in resolved:
        if path.is_dir() and not is_saved_dataset(path):
            for shard in shard_files(path, options.format):
                plans.extend(_plan_one(shard, options))
        else:
            plans.extend(_plan_one(path, options))
    return plans


def shard_files(folder: Path, fmt: str) -> list[Path]:
    """The data files of a folder of shards (``part-00000.parquet``, ``shard-001.jsonl``, ...), in name order,
    subfolders included; each is then read and recorded as a file of its own, one after the other (streaming: one
    chunk in memory at a time). Hidden files (``.``, ``_SUCCESS``-style ``_`` names) are skipped."""
    wanted = {fmt} if fmt in ("csv", "tsv", "parquet", "jsonl", "json") else set(_SUFFIXES.values())
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
        and _SUFFIXES.get(p.suffix.lower()) in wanted
    )
    if not files:
        kinds = ", ".join(sorted(k for k, v in _SUFFIXES.items() if v in wanted))
        raise IngestConfigError(
            f"{folder} is a folder with no data files ({kinds}) and not a saved Hugging Face dataset (save_to_disk)"
        )
    return files


def container_of(path: Path, fmt: str) -> str:
    if path.is_dir():
        if fmt not in ("auto", "hf", *SHAPE_FORMATS) or not is_saved_dataset(path):
            raise IngestConfigError(f"{path} is a folder but not a saved Hugging Face dataset (save_to_disk)")
        return "hf"
    if fmt == "hf":
        return "hf"
    container = fmt if fmt in ("csv", "tsv", "parquet", "jsonl", "json") else _SUFFIXES.get(path.suffix.lower())
    if container in ("json", None):
        first = first_significant_byte(path)
        if container is None and first not in (b"[", b"{", b'"', b""):
            raise IngestConfigError(f"cannot tell the format of {path.name} from its extension; pass --format")
        # A .json file that is not an array is read line by line (JSON Lines, or one object on one line).
        container = "json" if first == b"[" else "jsonl"
    return container


def _plan_one(path: Path, options: IngestOptions) -> list[SourcePlan]:
    container = container_of(path, options.format)
    if path.is_dir():
        digest = sha256_text(canonical_json(sha256_tree(path)))
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    else:
        digest, size = sha256_file(path), path.stat().st_size
    base = SourcePlan(path=path, label=str(path), container=container, shape="", sha256=digest, size=size)
    if container == "hf":
        return [
            _with_shape(replace(base, label=part.label, split=part.split), options, part.columns)
            for part in hf_parts(path)
        ]
    columns: list[str] | None = None
    if container in ("csv", "tsv"):
        columns = read_csv_header(path, "\t" if container == "tsv" else ",")
    elif container == "parquet":
        columns = parquet_columns(path)
    return [_with_shape(base, options, columns)]


def _with_shape(plan: SourcePlan, options: IngestOptions, columns: list[str] | None) -> SourcePlan:
    """Fix the plan's row shape (and mapping) and check the mapping and template against known columns."""
    mapping = dict(options.mapping)
    if options.format in SHAPE_FORMATS:
        shape = options.format
    elif mapping:
        shape = "mapped"
    elif plan.container in ("csv", "tsv"):
        raise IngestConfigError(f"{plan.path.name}: {plan.container} input needs --map COLUMN=user ...")
    else:
        first = dict.fromkeys(columns) if columns is not None else None
        if columns is None and plan.container != "parquet":  # an unreadable Parquet file stays undetected
            first = _first_row(plan)
        if first is None:
            shape = "undetected"
        elif isinstance(first, str):
            shape, mapping = "mapped", {"text": "user"}  # a collection of bare prompt strings
        else:
            keys = sorted(first) if isinstance(first, dict) else []
            detected = shape_from_keys(keys)
            if detected is None:
                raise IngestConfigError(
                    f"cannot tell the format of {plan.path.name} from the keys of its first row "
                    f"({', '.join(map(str, keys[:12])) or 'not an object'}); pass --format or --map"
                )
            shape = detected
    if columns is not None:
        _check_columns(plan, columns, mapping if shape == "mapped" else {}, options)
    return replace(plan, shape=shape, mapping=mapping if shape == "mapped" else {})


def _check_columns(plan: SourcePlan, columns: list[str], mapping: dict[str, str], options: IngestOptions) -> None:
    known = ", ".join(columns[:20])
    for column in mapping:
        if column not in columns:
            raise IngestConfigError(f"--map column {column!r} is not a column of {plan.path.name} ({known})")
    if options.template is not None:
        for name in resolve_template(options.template).fields:
            if name != "text" and name not in columns:
                raise IngestConfigError(f"template field {{{name}}} is not a column of {plan.path.name} ({known})")


def _first_row(plan: SourcePlan) -> Any:
    """The first parseable row of a JSON(L) file or dataset, or None when none can be found."""
    if plan.container == "hf":
        return first_hf_row(plan.path, plan.split)
    if plan.container == "json":
        import ijson

        try:
            with plan.path.open("rb") as handle:
                for item in ijson.items(handle, "item", use_float=True):
                    return item
        except Exception:  # a broken first element: the reader quarantines it; the shape stays undetected
            return None
        return None
    for seen, raw in enumerate(read_jsonl(plan.path, ReadPosition()), start=1):
        if raw.error is None and isinstance(raw.value, dict | str):
            return raw.value
        if seen >= _DETECT_LINES:
            break
    return None
