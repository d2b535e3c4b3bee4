"""How lowbit traces a model with torch.fx: which modules stay one opaque call and which are traced into.

torch.fx keeps every torch.nn module whole by default; lowbit traces into torch's Transformer layers (their weight
layers are inside), keeps its quantizers and the layers it quantizes whole, and keeps timm's untraceable helpers
whole as timm's own feature extraction does, unless such a module traces on its own (timm lists whole classes).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from lowbit.layers import is_quantizable
from lowbit.quantizer import Quantizer

TRACED_TORCH_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


class _Tracer(fx.Tracer):
    """fx tracer that keeps timm's untraceable helpers opaque, as timm's own feature extraction does, unless a
    module timm lists traces on its own (timm lists whole classes, such as NFNet's blocks, that trace): its
    layers then get the graph's quantizers rather than module swapping's."""

    def __init__(self) -> None:
        self._leaf_types: tuple[type, ...] = ()
        self._traces: dict[int, bool] = {}
        autowrap: tuple = ()
        try:
            from timm.layers import get_notrace_functions, get_notrace_modules
            self._leaf_types = tuple(get_notrace_modules())
            autowrap = tuple(get_notrace_functions())
        except ImportError:
            pass
        super().__init__(autowrap_functions=autowrap)

    def _traces_alone(self, m: nn.Module) -> bool:
        if id(m) not in self._traces:
            try:
                _Tracer().trace(m)
                self._traces[id(m)] = True
            except Exception:  # noqa: BLE001 - whatever tracing raises, the module stays one opaque call
                self._traces[id(m)] = False
        return self._traces[id(m)]

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if type(m) in TRACED_TORCH_LAYERS:
            return False  # torch.nn modules are opaque to fx by default, with their weight layers inside
        if is_quantizable(m) or isinstance(m, Quantizer):
            return True
        if isinstance(m, self._leaf_types):  # batch-norm with an activation stays whole: it is folded as one
            return isinstance(m, nn.modules.batchnorm._NormBase) or not self._traces_alone(m)
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (raises whatever torch.fx raises). torch's fused attention path is off
    while tracing: the checks that choose it read tensor shapes, which symbolic tracing cannot."""
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        graph = _Tracer().trace(model)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return fx.GraphModule(model, graph, model.__class__.__name__)
