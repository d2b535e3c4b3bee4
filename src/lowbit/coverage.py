"""How much of a quantized model is actually quantized.

lowbit replaces ``Conv2d``, ``Conv1d``, ``ConvTranspose2d`` and ``Linear`` layers (``nn.MultiheadAttention``
is rebuilt from ``Linear`` projections first, see :mod:`lowbit.attention`); other weight-bearing layers
(``Embedding``, bare parameters such as position embeddings, weights passed to ``F.linear`` by ``forward``)
keep float weights. A "4-bit" model can therefore be partly float, and a user must be told how much and where,
rather than discover it in the file size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lowbit.layers import QuantLayer, quantized_type_names

# Layers whose float parameters are expected (per-channel affine terms, a tiny share of any model)
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


@dataclass(frozen=True)
class Coverage:
    """Parameter counts: all of them, those kept float, and per module type those lowbit could not quantize."""

    total: int
    float_params: int
    unquantized: dict[str, int] = field(default_factory=dict)

    @property
    def float_fraction(self) -> float:
        return self.float_params / self.total if self.total else 0.0

    def describe(self) -> str:
        """One line for reports: the float share and, when layers were left float, which kinds."""
        share = f"{100 * self.float_fraction:.1f}% of {self.total:,} parameters stay float"
        if not self.unquantized:
            return f"{share} (biases and norms)"
        kinds = ", ".join(f"{kind} ({n:,})" for kind, n in sorted(self.unquantized.items(), key=lambda kv: -kv[1]))
        return f"{share}: not quantized by lowbit: {kinds}; only {quantized_type_names()} weights are quantized"

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "float_params": self.float_params, "unquantized": dict(self.unquantized)}


def coverage(qmodel: nn.Module) -> Coverage:
    """Count the parameters of ``qmodel`` stored on a quantization grid and those kept float."""
    total = float_params = 0
    unquantized: dict[str, int] = {}
    direct = None
    for path, module in qmodel.named_modules():
        for name, p in module.named_parameters(recurse=False):
            total += p.numel()
            if isinstance(module, QuantLayer) and name == "weight":
                continue
            float_params += p.numel()
            if not isinstance(module, (QuantLayer, NORM_TYPES)) and name != "bias":
                kind = type(module).__name__
                if type(module) is nn.Module:
                    # torch.fx keeps a parameter that forward() reads as a tensor (F.linear(x, self.qkv.weight))
                    # in a bare holder module: name the first such weight instead of "Module"
                    direct = direct or f"parameters forward() reads directly (e.g. {path}.{name})"
                    kind = direct
                unquantized[kind] = unquantized.get(kind, 0) + p.numel()
    return Coverage(total, float_params, unquantized)
