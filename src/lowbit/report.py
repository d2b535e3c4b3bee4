"""Plain-text tables for the CLI (the library itself never prints)."""

from __future__ import annotations

import math
from typing import Sequence


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.2f}"
    return "-" if v is None else str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left/right aligned text table (numbers right-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(headers))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric))

    lines = [fmt(list(headers)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [fmt(r) for r in cells])


def metrics_row(label: str, metrics: dict | None, size: int | None, ratio: float | None,
                quantize_seconds: float | None, eval_seconds: float | None) -> list:
    """One row of the float-vs-quantized table (metrics as fractions, shown as percentages)."""
    m = metrics or {}
    pct = [100 * m[k] if k in m else None for k in ("top1", "top5", "precision", "recall", "f1")]
    return [label, *pct, human_bytes(size), None if ratio is None else f"{ratio:.3f}x", quantize_seconds, eval_seconds]


METRIC_HEADERS = ("model", "top1 %", "top5 %", "precision %", "recall %", "F1 %", "file", "size", "quantize s", "eval s")
