"""Ingest, duplicate detection, quality checks, review and snapshots: the data side of Refinery."""
