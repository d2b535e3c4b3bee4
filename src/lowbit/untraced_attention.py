"""Fused attention inside a ``forward`` that torch.fx cannot trace, quantized all the same.

In a traced graph, :mod:`lowbit.fused_attention` writes each ``scaled_dot_product_attention`` call out so that
its queries, keys, values and probabilities get activation quantizers. A module whose ``forward`` does not trace
(timm's Twins computes its windowed attention in one that takes the map size as a second argument) keeps its own
code, so its calls stayed fused and float: both attention matmuls ran in float in an integer runtime.

:func:`route_untraced_attention` gives each such module a child :class:`QuantizedAttention` (quantizers for the
queries, keys, values and probabilities, and the same three steps as the written-out form) and two hooks: while
the module's ``forward`` runs, a :class:`~torch.overrides.TorchFunctionMode` hands every fused call it makes to
that child. Modules are found by reading their source (``forward`` and the methods it reaches call
``scaled_dot_product_attention``), so a model rebuilt from its architecture gets the same children before a
saved state is loaded into it. The hooks are plain functions of the module, so copies of the model route to
their own child; ``torch.export`` runs them, so the exported graph holds the quantize-dequantize pairs.
Calls with dropout or grouped-query heads run fused on their quantized inputs.
"""

from __future__ import annotations

import ast
import threading

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lowbit.chained_batchnorm import reached_methods
from lowbit.config import QuantConfig
from lowbit.fused_attention import DEFAULTS, PARAMETERS, attention_probabilities
from lowbit.quantizer import Quantizer

CHILD = "fused_attention"  # the child that computes a routed module's fused calls
INPUTS = ("query", "key", "value")


class QuantizedAttention(nn.Module):
    """``scaled_dot_product_attention`` in three steps, with its queries, keys, values and probabilities
    quantized (each quantizer ``None`` where the config keeps that value float)."""

    def __init__(self, quantizers: dict[str, Quantizer | None]) -> None:
        super().__init__()
        for name in (*INPUTS, "probs"):
            setattr(self, f"{name}_quant", quantizers.get(name))
        self.routes: list[TorchFunctionMode] = []  # the routing modes entered and not yet left

    def _quantized(self, name: str, x: torch.Tensor) -> torch.Tensor:
        quantizer = getattr(self, f"{name}_quant")
        return x if quantizer is None else quantizer(x)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        arguments = {**DEFAULTS, **dict(zip(PARAMETERS, args)), **kwargs}
        query, key, value = (self._quantized(n, arguments[n]) for n in INPUTS)
        if arguments["dropout_p"] != 0 or arguments["enable_gqa"]:
            rest = {k: v for k, v in arguments.items() if k not in INPUTS}
            return F.scaled_dot_product_attention(query, key, value, **rest)
        scores = torch.matmul(query, key.transpose(-2, -1))
        probabilities = attention_probabilities(scores, query, arguments["scale"], arguments["attn_mask"],
                                                arguments["is_causal"])
        return torch.matmul(self._quantized("probs", probabilities), value)


class _Route(TorchFunctionMode):
    """Hands each fused attention call to ``target``; every other function runs as it is, and so does the fused
    call a :class:`QuantizedAttention` makes itself (one of a routed module inside another routed module's
    ``forward`` would otherwise reach the outer module's child)."""

    state = threading.local()  # whether a routed call is running in this thread (routes nest, modes are per thread)

    def __init__(self, target: QuantizedAttention) -> None:
        super().__init__()
        self.target = target

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is not F.scaled_dot_product_attention or getattr(_Route.state, "inside", False):
            return func(*args, **(kwargs or {}))
        _Route.state.inside = True
        try:
            return self.target(*args, **(kwargs or {}))
        finally:
            _Route.state.inside = False


def _enter(module: nn.Module, args: tuple) -> None:
    child = module.get_submodule(CHILD)
    route = _Route(child)
    route.__enter__()
    child.routes.append(route)


def _leave(module: nn.Module, args: tuple, output: object) -> None:
    child = module.get_submodule(CHILD)
    if child.routes:
        child.routes.pop().__exit__(None, None, None)


def _calls_fused_attention(fn: ast.FunctionDef) -> bool:
    return any(isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Attribute) and node.func.attr == "scaled_dot_product_attention")
        or (isinstance(node.func, ast.Name) and node.func.id == "scaled_dot_product_attention"))
        for node in ast.walk(fn))


def calls_fused_attention(module: nn.Module) -> bool:
    """Whether ``module``'s own ``forward``, or a method it reaches on ``self``, calls
    ``scaled_dot_product_attention`` (torch's own modules excluded: lowbit rebuilds the ones that hold it)."""
    if type(module).__module__.startswith("torch."):
        return False
    methods = reached_methods(type(module))
    return methods is not None and any(_calls_fused_attention(fn) for fn in methods)


def attach_route(module: nn.Module, quantizers: dict[str, Quantizer | None]) -> None:
    """Give ``module`` its :class:`QuantizedAttention` child and the hooks that route its fused calls there."""
    module.add_module(CHILD, QuantizedAttention(quantizers))
    module.register_forward_pre_hook(_enter)
    module.register_forward_hook(_leave, always_call=True)  # leave the mode when forward raises, too


def route_untraced_attention(module: nn.Module, config: QuantConfig, prefix: str, skip: tuple[str, ...],
                             device: torch.device) -> None:
    """Route the fused attention calls of every module of ``module`` (at path ``prefix`` in the model) that
    calls them in a ``forward`` of its own, except the modules under the paths in ``skip`` (traced parts,
    whose graphs write their calls out)."""
    for path, sub in list(module.named_modules()):
        if any(path == p or path.startswith(f"{p}.") for p in skip) or hasattr(sub, CHILD) \
                or not calls_fused_attention(sub):
            continue
        where = f"{prefix}{path}.{CHILD}" if path else f"{prefix}{CHILD}"
        quantizers = {}
        for name in (*INPUTS, "probs"):
            spec = config.activation_spec_for(f"{where}.{name}_quant", where, f"{prefix}{path}".rstrip("."))
            quantizers[name] = None if spec is None else Quantizer(spec, config.seed, device)
        if any(q is not None for q in quantizers.values()):
            attach_route(sub, quantizers)
