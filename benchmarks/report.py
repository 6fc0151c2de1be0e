"""Output shared by the benchmarks: figures on stdout, progress on stderr, aligned tables."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def say(message: str = "") -> None:
    print(message, flush=True)


def progress(message: str) -> None:
    # Progress goes to stderr so stdout holds only the figures.
    print(f"  .. {message}", file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        # First column left-aligned (labels), the rest right-aligned (numbers).
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join("  " + row for row in out)
