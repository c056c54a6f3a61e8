"""Quality checks over the training records, one module per check, each declaring its :class:`CheckSpec` next to
its code; the registry (``registry.SPECS``) is built from the specs and the runner (``run_scan``) holds every
check's output to the contract (docs/CHECKS.md for each check's rules and measurements).
"""

from curation.checks.registry import CHECKS, DEFAULT_CHECKS, resolve_checks
from curation.checks.runner import ScanResult, run_scan
from curation.checks.spec import (
    CheckContext,
    CheckOutput,
    CheckSpec,
    ContaminationHit,
    ContractError,
    Finding,
    Needs,
    PairFinding,
    ScanError,
    ScanRecord,
)

__all__ = [
    "CHECKS",
    "DEFAULT_CHECKS",
    "CheckContext",
    "CheckOutput",
    "CheckSpec",
    "ContaminationHit",
    "ContractError",
    "Finding",
    "Needs",
    "PairFinding",
    "ScanError",
    "ScanRecord",
    "ScanResult",
    "resolve_checks",
    "run_scan",
]
