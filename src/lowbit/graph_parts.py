"""The traceable parts of a model that torch.fx cannot trace as a whole.

The Python control flow that defeats tracing (a branch on a tensor's value or shape, a loop whose count the data
decides) usually sits in one or two ``forward`` methods, most often the top-level one, while the blocks they call
trace. Module swapping alone would then leave every batch-norm unfolded and every residual sum unquantized, so an
integer runtime runs none of the convolutions on integers. Instead, the untraceable modules keep their own
``forward`` and each of their largest traceable submodules is traced on its own and quantized as a graph;
only layers that no traced part holds are swapped.

A part must be called with one argument: a submodule whose ``forward`` takes more (a mask, a flag) is traced
with whatever those are at tracing time, which need not be what its caller passes, so it is split further.
A traced part keeps only its ``forward``, as a model traced whole does.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten

from lowbit.errors import first_line
from lowbit.layers import is_quantizable
from lowbit.quantizer import Quantizer
from lowbit.tracing import trace


def _takes_one_argument(module: nn.Module) -> bool:
    """Whether ``module.forward`` takes exactly one argument (besides ``self``), with no default."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) == 1 and params[0].default is inspect.Parameter.empty and params[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _traced(module: nn.Module) -> fx.GraphModule | None:
    if not _takes_one_argument(module):
        return None
    try:
        return trace(module)
    except Exception:  # noqa: BLE001 - whatever tracing raises, the module is split into its children
        return None


def traceable_parts(model: nn.Module) -> dict[str, fx.GraphModule]:
    """The largest submodules of ``model`` that trace and hold a layer lowbit quantizes, by path, in module
    order, each traced (not yet prepared). ``model`` itself is not tried (the caller found it untraceable)."""
    parts: dict[str, fx.GraphModule] = {}
    seen: set[int] = set()

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if id(child) in seen or is_quantizable(child) or isinstance(child, Quantizer) \
                    or not any(is_quantizable(m) for m in child.modules()):
                continue
            seen.add(id(child))  # a module registered twice would be traced into two copies: split it instead
            gm = _traced(child)
            if gm is None:
                visit(child, f"{path}.")
            else:
                parts[path] = gm

    visit(model, "")
    return parts


def graph_layer_names(gm: fx.GraphModule) -> list[str]:
    """The quantizable layers a traced graph calls, in the order it calls them first."""
    modules = dict(gm.named_modules())
    return list(dict.fromkeys(n.target for n in gm.graph.nodes
                              if n.op == "call_module" and is_quantizable(modules[n.target])))


def layer_order(model: nn.Module, parts: dict[str, fx.GraphModule]) -> list[str]:
    """Every quantizable layer of ``model``: module order, and inside a traced part the order its graph calls them
    (the untraceable ``forward`` gives no order; registration order is the usual one)."""
    order: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if path in parts:
                order.extend(f"{path}.{n}" for n in graph_layer_names(parts[path]))
            elif is_quantizable(child):
                order.append(path)
            else:
                visit(child, f"{path}.")

    visit(model, "")
    return list(dict.fromkeys(order))


def fallback_message(model: nn.Module, exc: Exception, parts: dict[str, fx.GraphModule]) -> str:
    """The warning for a model torch.fx could not trace whole: why, and what was done instead."""
    layers = sum(is_quantizable(m) for m in model.modules())
    traced = sum(len(graph_layer_names(gm)) for gm in parts.values())
    if parts:
        how = (f"its own forward() is kept, and {traced} of its {layers} quantizable layers, in {len(parts)} "
               "submodule(s) that trace, are quantized as graphs; the other layers fall back to module swapping "
               "(weights and inputs quantized, batch-norm not folded)")
    else:
        how = ("falling back to module swapping: weights and conv/linear inputs are quantized, batch-norm is not "
               "folded")
    return (f"torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: {first_line(exc)}); {how}. To "
            "get full graph quantization, move data-dependent Python control flow out of forward() or mark that "
            "submodule as a leaf with torch.fx.wrap.")


@torch.no_grad()
def parts_difference(model: nn.Module, prepared: nn.Module, x: torch.Tensor) -> float:
    """The largest difference between the outputs of ``model`` and of ``prepared`` (its traced parts in place,
    every quantizer still off), as a share of the largest output; infinite when the outputs differ in form or the
    prepared model fails (a forward that indexes a part or calls another of its methods).
    A part traced with values its caller changes at run time (an attribute set by the untraceable ``forward``)
    computes something else: this finds it before it is quantized."""
    ours = tree_flatten(model(x))[0]
    try:
        theirs = tree_flatten(prepared(x))[0]
    except Exception:  # noqa: BLE001 - forward reaches into a part for more than its forward (an index, a method)
        return math.inf
    if len(ours) != len(theirs) or not all(isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                                           and a.shape == b.shape for a, b in zip(ours, theirs)):
        return math.inf
    scale = max((a.abs().max().item() for a in ours if a.numel()), default=0.0) or 1.0
    return max(((a.float() - b.float()).abs().max().item() for a, b in zip(ours, theirs) if a.numel()),
               default=0.0) / scale
