"""The allocation written beside a mixed-precision model: one CSV row per layer and a bar chart (PNG)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lowbit.io.atomic import atomic_path
from lowbit.mixed.allocate import Allocation
from lowbit.mixed.plot import plot_allocation

ALLOCATION_HEADERS = ("layer", "params", "weight bits", "input bits", "sensitivity", "bytes", "MACs", "pinned")


def allocation_rows(allocation: Allocation) -> list[list]:
    """One row per layer, in the order of :data:`ALLOCATION_HEADERS`."""
    return [[c.name, c.params, c.weight_bits, c.input_bits, c.sensitivity, c.weight_bytes, c.macs,
             "yes" if c.pinned else ""] for c in allocation.layers]


def allocation_paths(model_path: Path) -> tuple[Path, Path]:
    """``<model>.allocation.csv`` and ``<model>.allocation.png`` beside the model file."""
    return model_path.with_suffix(".allocation.csv"), model_path.with_suffix(".allocation.png")


def write_allocation(allocation: Allocation, model_path: Path, title: str = "") -> tuple[Path, Path]:
    """The allocation's CSV and PNG files (see :func:`allocation_paths`), written atomically."""
    csv_path, png_path = allocation_paths(model_path)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(ALLOCATION_HEADERS)
    writer.writerows(allocation_rows(allocation))
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buffer.getvalue())
    png_path = plot_allocation(allocation, png_path, title)
    return csv_path, png_path
