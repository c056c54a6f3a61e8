"""One row of the reliability table, and the table itself."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    """The outcome of one scenario's trials; ``counts`` names the count columns that apply to it."""

    scenario: str
    counts: tuple[str, ...] = ()  # of "reached_reference", "audit_clean", "caught"
    trials: int = 0
    passed: int = 0
    reached_reference: int = 0
    audit_clean: int = 0
    caught: int = 0
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.trials > 0 and self.passed == self.trials

    @property
    def detail(self) -> str:
        return "; ".join(self.details)


COLUMNS = ("scenario", "trials", "reached reference", "audit clean", "caught", "seconds", "result")


def _cells(row: Row) -> list[str]:
    def count(name: str) -> str:
        return f"{getattr(row, name)}/{row.trials}" if name in row.counts else "-"

    return [
        row.scenario,
        str(row.trials),
        count("reached_reference"),
        count("audit_clean"),
        count("caught"),
        f"{row.seconds:.0f}",
        "pass" if row.ok else "FAIL",
    ]


def table(rows: list[Row]) -> str:
    """A Markdown table of the rows (what the suite prints and docs/RELIABILITY.md shows)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def details(rows: list[Row]) -> str:
    """One paragraph per scenario: its kill points, faults and anything that failed."""
    return "\n".join(f"- {row.scenario}: {row.detail}" for row in rows if row.details)
