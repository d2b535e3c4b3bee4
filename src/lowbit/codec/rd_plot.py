"""The rate-distortion plot: PSNR against bits per pixel, one curve per variant of a codec, with each variant's
BD-rate against the reference in the legend (PNG, written atomically)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from lowbit.io.atomic import atomic_path

Curve = list[tuple[float, float]]  # (bpp, PSNR dB) per rate point


def plot_rd_curves(curves: dict[str, Curve], path: str | Path, title: str = "",
                   bd_rates: dict[str, float] | None = None) -> Path:
    """One line per variant through its rate points; ``bd_rates`` (percent, NaN when undefined) label them."""
    with warnings.catch_warnings():  # matplotlib's font parser trips newer pyparsing's deprecation warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        import matplotlib
        matplotlib.use("Agg")  # files only: never needs a display
        import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, points in curves.items():
        points = sorted(points)
        rate = (bd_rates or {}).get(name)
        label = name if rate is None else f"{name} ({'no overlap' if math.isnan(rate) else f'{rate:+.1f}%'})"
        ax.plot([b for b, _ in points], [p for _, p in points], marker="o", markersize=3, linewidth=1, label=label)
    ax.set_xlabel("bits per pixel (real bitstreams)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, title="BD-rate vs reference" if bd_rates else None, title_fontsize=6)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)
    return path
