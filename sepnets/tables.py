"""Plain-text tables with aligned columns (for the CLI's reports)."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def aligned(rows: Sequence[Sequence[str]], *, left: Collection[int]) -> list[str]:
  """One line per row, columns padded to a shared width: those in `left` left-aligned,
  the rest (numbers) right-aligned."""
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return ['  '.join(cell.ljust(w) if i in left else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
