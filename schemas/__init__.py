"""Contracts shared by every Refinery package: record and artifact models, ids and hashing, the catalog.

This package imports none of the others (see docs/ARCHITECTURE.md).
"""

from schemas.ids import artifact_id, canonical_json, record_id, sha256_bytes, sha256_file
from schemas.records import (
    BatchPurpose,
    IngestBatch,
    Message,
    QuarantinedRow,
    Record,
    Role,
    SourceRow,
)

__all__ = [
    "BatchPurpose",
    "IngestBatch",
    "Message",
    "QuarantinedRow",
    "Record",
    "Role",
    "SourceRow",
    "artifact_id",
    "canonical_json",
    "record_id",
    "sha256_bytes",
    "sha256_file",
]
