"""Ingest: read instruction/response data in many formats into canonical records, quarantining bad rows.

from curation.ingest import IngestOptions, ingest
result = ingest(catalog, [Path("train.csv")], IngestOptions(format="csv", mapping={"text": "user",
                                                            "category": "assistant"}))
"""

from curation.ingest.options import IngestConfigError, IngestOptions, field_help, parse_mapping
from curation.ingest.pipeline import FileReport, IngestResult, ingest
from curation.ingest.templates import TEMPLATES

__all__ = [
    "TEMPLATES",
    "FileReport",
    "IngestConfigError",
    "IngestOptions",
    "IngestResult",
    "field_help",
    "ingest",
    "parse_mapping",
]
