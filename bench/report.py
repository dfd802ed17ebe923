"""The shape every benchmark's section of BENCHMARKS.md shares: a heading, what was measured and
how, a two-column table of figures, any further tables, and a short history of earlier runs (the
"- ..." lines the previous section had, plus this run's, newest last)."""

from __future__ import annotations

from collections.abc import Sequence

HISTORY_KEEP = 20  # history lines kept per section


def history_lines(previous_section: str | None) -> list[str]:
    """The "- ..." lines under "History" in the old section, oldest first."""
    if not previous_section or "History" not in previous_section:
        return []
    tail = previous_section.split("History", 1)[1]
    return [ln for ln in tail.splitlines() if ln.startswith("- ")]


def render_section(
    heading: str,
    intro: str,
    rows: Sequence[tuple[str, str]],
    history: Sequence[str],
    tables: Sequence[str] = (),
) -> str:
    """The section's markdown; `history` is every line to keep (see `keep`), `tables` are extra
    markdown lines after the figures."""
    out = [
        heading,
        "",
        intro,
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v.replace('|', '/')} |" for k, v in rows),  # error texts must not split cells
        "",
        *([*tables, ""] if tables else []),
        "History (newest last):",
        "",
        *history,
        "",
    ]
    return "\n".join(out)


def keep(old: Sequence[str], line: str) -> list[str]:
    """The history after this run: the old lines and `line`, the newest HISTORY_KEEP of them."""
    return [*old, line][-HISTORY_KEEP:]


def previous_figure(old: Sequence[str], label: str) -> float | None:
    """The last ``label N`` figure in the history lines (None when no line has one)."""
    for line in reversed(old):
        _, sep, tail = line.partition(f"{label} ")
        if sep:
            try:
                return float(tail.split()[0].rstrip(",;").replace(",", ""))
            except (ValueError, IndexError):
                continue
    return None


def vs_previous(value: float, prev: float | None, first: str = "") -> str:
    """`` (0.90x previous)``, or `first` when there is no previous figure."""
    return f" ({value / prev:.2f}x previous)" if prev else first
