"""Printing: tables per scenario, checks against the issues' targets, the final summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

PASS, MISSED, SKIPPED, ERROR = "PASS", "MISSED", "SKIPPED", "ERROR"


@dataclass
class Check:
    """One target named in an issue, and what this run measured for it."""

    issue: int
    target: str
    measured: str = ""
    status: str = SKIPPED
    note: str = ""

    def judge(self, ok: bool, measured: str) -> Check:
        self.status = PASS if ok else MISSED
        self.measured = measured
        return self


@dataclass
class ScenarioResult:
    name: str
    checks: list[Check] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None


class Table:
    """Rows of cells, printed with aligned columns (text left, numbers right)."""

    def __init__(self, headers: Sequence[str], left: int = 1) -> None:
        self.headers = list(headers)
        self.left = left  # how many leading columns are text, aligned left
        self.rows: list[list[str]] = []

    def add(self, *cells: object) -> None:
        self.rows.append([cell if isinstance(cell, str) else fmt(cell) for cell in cells])

    def render(self, indent: str = "  ") -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))

        def line(cells: Sequence[str], header: bool = False) -> str:
            out = []
            for i, cell in enumerate(cells):
                left = i < self.left or header
                out.append(cell.ljust(widths[i]) if left else cell.rjust(widths[i]))
            return indent + "  ".join(out).rstrip()

        rule = indent + "  ".join("-" * w for w in widths)
        return "\n".join([line(self.headers, header=True), rule, *map(line, self.rows)])


def fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def per_second(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def ms(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.2f}"


def mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / (1024 * 1024):.1f} MB"


NOISE_LIMIT = 25.0  # CPU % of other processes above which a run's figures are suspect


def noise_warning(label: str, others: float | None) -> str | None:
    """A warning when other processes took a noticeable share of the CPU during a run."""
    if others is None or others <= NOISE_LIMIT:
        return None
    return (
        f"  warning: other processes used {others:.0f}% CPU during '{label.strip()}'; "
        "its figures are disturbed (run again on a quieter machine to compare)"
    )


def heading(title: str) -> str:
    return f"\n=== {title} " + "=" * max(3, 76 - len(title))


def summary(results: list[ScenarioResult]) -> str:
    table = Table(["issue", "target", "measured", "result"], left=4)
    notes = []
    for result in results:
        if result.error:
            notes.append(f"  {result.name}: not measured, {result.error.splitlines()[0]}")
        elif result.skipped:
            notes.append(f"  {result.name}: skipped, {result.skipped}")
        for check in result.checks:
            if check.note and check.note != result.skipped:
                notes.append(f"  {check.target}: {check.note}")
            issue = f"#{check.issue}" if check.issue else "-"
            table.add(issue, check.target, check.measured or "-", check.status)
    missed = sum(c.status == MISSED for r in results for c in r.checks)
    passed = sum(c.status == PASS for r in results for c in r.checks)
    other = sum(c.status in (SKIPPED, ERROR) for r in results for c in r.checks)
    verdict = f"  {passed} PASS, {missed} MISSED, {other} skipped or not measured"
    if missed:
        verdict += "  <-- MISSED targets above"
    parts = [heading("summary"), table.render()]
    if notes:
        parts += ["", *notes]
    parts += ["", verdict]
    return "\n".join(parts)
