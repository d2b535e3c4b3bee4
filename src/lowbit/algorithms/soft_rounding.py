"""AdaRound's learnable rounding (Nagel et al. 2020, "Up or Down? Adaptive Rounding for PTQ").

Each weight is ``floor(w / s) + h(V)`` on the grid, with ``h`` a rectified sigmoid stretched to
``[gamma, zeta] = [-0.1, 1.1]`` and clipped to ``[0, 1]``. ``V`` starts where ``h(V)`` equals the fractional
part of ``w / s`` (so the soft weight starts at the float weight), and a regularizer ``1 - |2h - 1|^beta`` with
``beta`` annealed from high to low pushes every ``h`` to 0 or 1. Once ``hard`` is set, ``h`` is thresholded at
0.5 and the result is a plain integer grid.
"""

from __future__ import annotations

import torch
from torch import nn

GAMMA, ZETA = -0.1, 1.1


class SoftRounding(nn.Module):
    """A rounding module for :class:`lowbit.layers.QuantLayer` (install it as ``layer.rounding``)."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach() / scale
        self.register_buffer("floor", torch.floor(w))
        frac = (w - self.floor).clamp(0.01, 0.99)
        # inverse of the rectified sigmoid at the fractional part
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1))
        self.hard = False

    def h(self) -> torch.Tensor:
        """Soft rounding offsets in [0, 1]."""
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def offsets(self) -> torch.Tensor:
        return (self.v >= 0).to(self.floor.dtype) if self.hard else self.h()

    def regularizer(self, beta: float) -> torch.Tensor:
        """Sum over weights of ``1 - |2h - 1|^beta`` (zero exactly when every h is 0 or 1)."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def forward(self, weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                qmin: int, qmax: int) -> torch.Tensor:
        zp = zero_point.to(weight.dtype)
        q = torch.clamp(self.floor + self.offsets() + zp, qmin, qmax)
        return (q - zp) * scale


def install(layer) -> SoftRounding:
    """Give a calibrated quantized layer a soft rounding that starts at its float weight."""
    scale, _ = layer.weight_quant.grid(layer.weight.dim())
    layer.rounding = SoftRounding(layer.weight, scale).to(layer.weight.device)
    return layer.rounding


def beta_schedule(step: int, total: int, warmup: float = 0.2, start: float = 20.0, end: float = 2.0) -> float | None:
    """Linearly annealed ``beta``; ``None`` during warm-up, when the regularizer is off and only the output error counts."""
    first = int(warmup * total)
    if step < first:
        return None
    progress = (step - first) / max(total - first, 1)
    return start - (start - end) * progress
