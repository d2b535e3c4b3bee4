"""``ExportReport``: what an exporter wrote, and what the runtime will compute in float rather than on integers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ExportReport:
    """The file written, its size, how many initializers were stored narrower than the exporter wrote them, and
    one line per part of the model that runs in float."""

    path: Path
    bytes: int
    narrowed_initializers: int
    float_compute: list[str] = field(default_factory=list)
