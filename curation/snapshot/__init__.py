"""Snapshots: the approved, de-duplicated training records frozen as Parquet splits plus a manifest.

In the order a snapshot is made: ``policy`` (which records, and the split fractions: every rule is a field of
:class:`SnapshotPolicy`), ``select`` (the policy applied to the catalog: members with their basis, exclusions
with their reason), ``splits`` (groups that keep duplicate clusters within one split, dealt to the splits),
``contamination`` (registered eval items that nearly duplicate a train member; records near a frozen snapshot),
``create`` (written atomically, registered in one transaction), ``load`` (read back, verified); then ``diff``
(what changed between two snapshots, and why) and ``export`` (JSONL in the common chat formats, or a Hugging Face
dataset). Every excluded record is stored with its reason (``snapshot_exclusions``), every member with its basis
and the review decision it relied on.
"""

from curation.snapshot.create import SnapshotResult, create_snapshot
from curation.snapshot.load import Snapshot, load_snapshot
from curation.snapshot.policy import SPLITS, SnapshotError, SnapshotPolicy

__all__ = [
    "SPLITS",
    "Snapshot",
    "SnapshotError",
    "SnapshotPolicy",
    "SnapshotResult",
    "create_snapshot",
    "load_snapshot",
]
