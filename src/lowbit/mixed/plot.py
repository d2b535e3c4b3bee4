"""Bar chart of the bits chosen per layer (PNG), written beside the quantized model."""

from __future__ import annotations

import warnings
from pathlib import Path

from lowbit.io.atomic import atomic_path
from lowbit.mixed.allocate import Allocation

BIT_COLOURS = {2: "#d62728", 3: "#ff7f0e", 4: "#2ca02c", 5: "#17becf", 6: "#9467bd", 8: "#1f77b4"}


def plot_allocation(allocation: Allocation, path: str | Path, title: str = "") -> Path:
    """Weight bits per layer as bars (and input activation bits as dots when they vary); written atomically."""
    with warnings.catch_warnings():  # matplotlib's font parser trips newer pyparsing's deprecation warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        import matplotlib
        matplotlib.use("Agg")  # files only: never needs a display
        import matplotlib.pyplot as plt

    rows = allocation.layers
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(rows) + 2), 3.6))
    xs = range(len(rows))
    ax.bar(xs, [r.weight_bits for r in rows], color=[BIT_COLOURS.get(r.weight_bits, "#7f7f7f") for r in rows],
           edgecolor=["black" if r.pinned else "none" for r in rows], label="weight bits")
    if allocation.activations:
        ax.plot(xs, [r.input_bits or 0 for r in rows], "ko", markersize=3, label="input bits")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xticks(list(xs), [r.name for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("bits")
    ax.set_yticks(sorted({r.weight_bits for r in rows} | {r.input_bits for r in rows if r.input_bits}))
    heading = f"{allocation.sensitivity} sensitivity, weights {allocation.compression:.2f}x smaller than float32"
    ax.set_title(f"{title}\n{heading}" if title else heading, fontsize=9)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return Path(path)
