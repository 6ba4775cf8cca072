"""Plain-text output for ``meshctl``: aligned columns and terminal-safe strings.

Deliberately tiny (ECOSYSTEM.md §2.4): widths are computed from the cells,
like ``columnize`` in serf and consul, so a long node name widens its column
instead of breaking the table, and the output never reflows with the
terminal's width.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

__all__ = ["columns", "printable", "width"]


def printable(text: str) -> str:
    """``text`` with unprintable characters written as ``\\xNN``/``\\uNNNN`` escapes.

    Member names, tags and error messages come from peers; escaping control
    characters keeps them from moving the cursor, recolouring the terminal
    or forging extra output lines.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def width(text: str) -> int:
    """Terminal cells taken by ``text``: wide East Asian characters 2, combining marks 0."""
    if text.isascii():
        return len(text)
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def columns(rows: Iterable[Sequence[object]], *, gap: int = 2) -> list[str]:
    """Lay ``rows`` out as left-aligned columns ``gap`` spaces apart.

    Args:
        rows: one sequence of cells per line (a header row is just a row);
            cells are passed through ``str`` and :func:`printable`.
        gap: spaces between columns.

    Returns:
        The lines, without trailing spaces or newlines.
    """
    table = [[printable(str(cell)) for cell in row] for row in rows]
    widths: list[int] = []
    for row in table:
        for i, cell in enumerate(row):
            if i == len(widths):
                widths.append(0)
            widths[i] = max(widths[i], width(cell))
    lines = []
    for row in table:
        padded = (cell + " " * (widths[i] - width(cell)) for i, cell in enumerate(row))
        lines.append((" " * gap).join(padded).rstrip())
    return lines
