"""Graph preparation: trace with torch.fx, fold batch-norm, swap in quantized layers, place activation quantizers.

Activation quantizers go where an integer runtime would requantize:
- the model inputs;
- the outputs of conv/linear layers, after the ReLU-like activation that follows them when there is one
  (runtimes fuse conv+ReLU); an output read only by a residual add plays the role ``RESIDUAL_BRANCH``,
  which ``residual_bits`` overrides;
- the outputs of residual adds, concatenations, tensor products and attention matmuls (again after a
  directly following ReLU); with ``float_residual_stream``, not those of adds whose sums reach only norms and
  further adds (a transformer's residual stream: every layer reads a norm's quantized output instead);
- any other value that feeds a weight layer or a matmul (a GELU, LayerNorm, softmax or average-pool output),
  so that every multiply-accumulate sees quantized inputs.
Shape-only operations (flatten, reshape, permute, max-pool, dropout, indexing) keep their input's grid and
are looked through. Fused attention calls are written out first (:mod:`lowbit.fused_attention`), so that the
softmax probabilities are quantized like any other matmul input. When the model does not trace as a whole,
:func:`prepare` keeps its untraceable ``forward`` methods and quantizes each of its largest traceable submodules
as a graph (:mod:`lowbit.graph_parts`); the layers outside them are swapped in place, each quantizing its own
input, with batch-norm left unfolded, and the fused attention calls of the untraceable ``forward`` methods are
routed to quantized steps (:mod:`lowbit.untraced_attention`).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import fx, nn

from lowbit.attention import split_attention
from lowbit.batchnorm_folding import fold_batchnorm
from lowbit.chained_batchnorm import fold_chained_batchnorms
from lowbit.config import RESIDUAL_BRANCH, QuantConfig
from lowbit.device import model_device
from lowbit.errors import LowbitError
from lowbit.fused_attention import write_out_fused_attention
from lowbit.graph_parts import fallback_message, graph_layer_names, layer_order, traceable_parts
from lowbit.layers import QuantLayer, is_quantizable, quantized_type_names, to_quantized
from lowbit.quantizer import Quantizer
from lowbit.requant_points import feeds_residual_add, node_kind, requant_points, weight_consumers
from lowbit.timm_layers import register_timm_layers
from lowbit.tracing import trace
from lowbit.untraced_attention import route_untraced_attention
from lowbit.weight_standardization import fold_weight_standardization
from lowbit.window_attention import rebuild_window_attention


Mode = Literal["fx", "parts", "swap"]
ACT_QUANT = "act_quant"


@dataclass
class QuantInfo:
    """What :func:`prepare` did, kept on the prepared model as ``lowbit_info`` (saved with it)."""

    config: QuantConfig
    mode: Mode
    arch: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def set_module(root: nn.Module, qualname: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``qualname`` of ``root`` (replacing what is there)."""
    parent, _, name = qualname.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _insert_activation_quantizers(gm: fx.GraphModule, config: QuantConfig, prefix: str) -> set[str]:
    """Place the quantizers; returns the names overrides may match besides modules and graph nodes: the roles
    (``RESIDUAL_BRANCH``) that some activation plays, and the paths of the quantizers an override kept out.
    ``prefix`` is the graph's path in the model, which the config's names include."""
    modules = dict(gm.named_modules())
    kinds = {n: node_kind(n, modules) for n in gm.graph.nodes}
    device = model_device(gm)  # activations flow on the model's device, so their grids live there too
    store = nn.ModuleDict()
    gm.add_submodule(ACT_QUANT, store)
    matchable: set[str] = set()
    for node in requant_points(gm, kinds, modules, config.float_residual_stream):
        consumers = [prefix + c for c in weight_consumers(node, modules)]
        producer = prefix + node.target if node.op == "call_module" else ""
        role = RESIDUAL_BRANCH if feeds_residual_add(node, kinds) else ""
        matchable.add(role)
        # a value named like a method of the store (x.to(...) gives "to", x.float() "float") is keyed apart
        key = f"{node.name}_value" if hasattr(nn.ModuleDict, node.name) else node.name
        spec = config.activation_spec_for(f"{prefix}{ACT_QUANT}.{key}", producer, prefix + node.name, *consumers, role)
        if spec is None:
            matchable.add(f"{prefix}{ACT_QUANT}.{key}")
            continue
        store[key] = Quantizer(spec, config.seed, device)
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(f"{ACT_QUANT}.{key}", (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
    return matchable - {""}


def _resolved(config: QuantConfig, layer_names: list[str]) -> QuantConfig:
    return config.resolve(layer_names[0] if layer_names else None, layer_names[-1] if layer_names else None)


def _prepare_fx(gm: fx.GraphModule, config: QuantConfig, prefix: str = "") -> set[str]:
    """Fold, swap and place quantizers in a traced graph at path ``prefix`` of the model (``config`` resolved);
    returns the names overrides may match beyond its modules and nodes (roles, quantizer paths left out)."""
    write_out_fused_attention(gm)
    fold_batchnorm(gm)
    modules = dict(gm.named_modules())
    for name in graph_layer_names(gm):
        if not config.keeps_float(prefix + name):
            spec = config.weight_spec_for(prefix + name)
            set_module(gm, name, to_quantized(modules[name], spec, seed=config.seed))
    matchable = _quantize_opaque_modules(gm, config, modules, prefix)
    if config.activations is not None or any(o.activations for o in config.overrides):
        matchable |= _insert_activation_quantizers(gm, config, prefix)
    gm.graph.lint()
    gm.recompile()
    return matchable


def _quantize_opaque_modules(gm: fx.GraphModule, config: QuantConfig, modules: dict[str, nn.Module],
                             prefix: str) -> set[str]:
    """Quantize the layers inside the modules the traced graph calls as opaque wholes (timm's untraceable blocks
    such as MobileViT's, torch.nn modules with layers inside), which would otherwise stay float: their
    traceable parts as graphs, the other layers by swapping. Returns the names overrides may match beyond modules
    and nodes."""
    matchable: set[str] = set()
    done: set[int] = set()
    for node in gm.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if module is None or id(module) in done or isinstance(module, (QuantLayer, Quantizer)) or is_quantizable(module):
            continue
        done.add(id(module))
        matchable |= _quantize_in_place(module, config, traceable_parts(module), f"{prefix}{node.target}.")
    return matchable


def _swap_with_input_quantizer(root: nn.Module, name: str, layer: nn.Module, config: QuantConfig,
                               prefix: str = "") -> None:
    """Put the quantized form of ``layer`` at ``name`` of ``root`` (at ``prefix + name`` in the model),
    quantizing its own input (module swapping)."""
    path = prefix + name
    set_module(root, name, to_quantized(layer, config.weight_spec_for(path),
                                        config.activation_spec_for(f"{path}.input_quant", path), config.seed))


def _quantize_in_place(module: nn.Module, config: QuantConfig, parts: dict[str, fx.GraphModule],
                       prefix: str = "") -> set[str]:
    """Quantize each traced part of ``module`` as a graph and put it in place; swap every other layer. Names in
    ``config`` are paths in the model, ``prefix`` + the path in ``module``. Returns the names overrides may
    match beyond modules and nodes (roles, quantizer paths left out)."""
    outside = [n for n, m in module.named_modules()
               if is_quantizable(m) and not any(n.startswith(f"{p}.") for p in parts)]
    route_untraced_attention(module, config, prefix, tuple(parts), model_device(module))
    matchable: set[str] = set()
    for path, gm in parts.items():
        matchable |= _prepare_fx(gm, config, f"{prefix}{path}.")
        _replace_everywhere(module, module.get_submodule(path), gm)
    for name in outside:
        layer = module.get_submodule(name)
        if not config.keeps_float(prefix + name) and not isinstance(layer, QuantLayer):  # an alias swapped it
            _swap_with_input_quantizer(module, name, layer, config, prefix)
            _replace_everywhere(module, layer, module.get_submodule(name))
            if module.get_submodule(name).input_quant is None:
                matchable.add(f"{prefix}{name}.input_quant")
    return matchable


def _replace_everywhere(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is registered: a module reused under two names is one module."""
    for path in [n for n, m in model.named_modules(remove_duplicate=False) if m is old]:
        set_module(model, path, new)


def prepare(model: nn.Module, config: QuantConfig, mode: Mode | None = None) -> nn.Module:
    """A copy of ``model`` ready for calibration: BN folded, quantized layers and quantizers in place.

    ``mode="swap"`` swaps modules in place without trying torch.fx: for models whose own class must survive
    (an image codec's ``compress``/``decompress`` live on it). By default the model is traced whole; where that
    fails, its largest traceable submodules are traced and quantized as graphs inside it (``mode="parts"``, which
    may also be asked for), and the layers outside them are swapped. The original model is not modified. The
    result carries a :class:`QuantInfo` as ``lowbit_info``.
    """
    if any(isinstance(m, (QuantLayer, Quantizer)) for m in model.modules()):
        raise LowbitError("this model is already quantized; pass the float model it came from")
    arch = getattr(model, "lowbit_arch", None)
    model = copy.deepcopy(model).eval()
    split_attention(model)
    rebuild_window_attention(model)
    fold_weight_standardization(model)
    register_timm_layers()
    if not any(is_quantizable(m) for m in model.modules()):
        raise LowbitError(f"{type(model).__name__} has no layer lowbit quantizes ({quantized_type_names()}); pass a "
                          "model built from them")
    if mode == "swap":
        return _swapped(model, config, arch, {})
    if mode == "parts":
        return _swapped(model, config, arch, traceable_parts(model))
    try:
        gm = trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure falls back, with the reason in the warning
        parts = traceable_parts(model)
        warnings.warn(fallback_message(model, exc, parts), stacklevel=2)
        return _swapped(model, config, arch, parts)
    resolved = _resolved(config, graph_layer_names(gm))
    matchable = _prepare_fx(gm, resolved)
    _check_overrides_match(gm, resolved, matchable)
    gm.lowbit_info = QuantInfo(resolved, "fx", arch)
    return gm


def _swapped(model: nn.Module, config: QuantConfig, arch: dict | None, parts: dict[str, fx.GraphModule]) -> nn.Module:
    if parts:
        fold_chained_batchnorms(model)
    resolved = _resolved(config, layer_order(model, parts))
    matchable = _quantize_in_place(model, resolved, parts)
    _check_overrides_match(model, resolved, matchable)
    model.lowbit_info = QuantInfo(resolved, "parts" if parts else "swap", arch)
    return model


def _check_overrides_match(prepared: nn.Module, config: QuantConfig, matchable: set[str] = frozenset()) -> None:
    """An override that matches nothing is almost always a typo: refuse it rather than quietly ignore it."""
    names = {n for n, _ in prepared.named_modules()} | matchable
    for path, gm in prepared.named_modules():
        if isinstance(gm, fx.GraphModule):
            names |= {f"{path}.{node.name}" if path else node.name for node in gm.graph.nodes}
    for o in config.overrides:
        if any(o.matches(n) for n in names):
            continue
        if o.pattern == RESIDUAL_BRANCH:
            raise LowbitError("residual_bits: no weight layer of this model feeds a residual add (or the model "
                              "could not be traced); drop residual_bits (--residual-bits)")
        layers = ", ".join(n for n, m in prepared.named_modules() if isinstance(m, QuantLayer))
        raise LowbitError(f"override {o.pattern!r} matches no layer or activation; layer names are: "
                          f"{layers[:200]}{'...' if len(layers) > 200 else ''}")


def activation_quantizers(model: nn.Module) -> list[tuple[str, Quantizer]]:
    """Quantizers of activations (graph-placed ones and module-swap input quantizers), with names."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, Quantizer) and not n.endswith("weight_quant")]


def layer_input_quantizers(model: nn.Module) -> dict[str, str]:
    """For each quantized weight layer, the module path of the activation quantizer that feeds it
    (looking through shape-only operations). Layers whose input is not quantized are left out."""
    found = {name: f"{name}.input_quant" for name, m in model.named_modules()
             if isinstance(m, QuantLayer) and m.input_quant is not None}
    for path, gm in model.named_modules():  # the whole model, or the traced parts of an untraceable one
        if not isinstance(gm, fx.GraphModule):
            continue
        prefix = f"{path}." if path else ""
        modules = dict(gm.named_modules())
        for node in gm.graph.nodes:
            if node.op != "call_module" or not isinstance(modules[node.target], QuantLayer) or not node.args:
                continue
            src = node.args[0]
            while isinstance(src, fx.Node) and node_kind(src, modules) == "pass" and src.all_input_nodes:
                src = src.all_input_nodes[0]
            if isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules[src.target], Quantizer):
                found.setdefault(prefix + node.target, prefix + src.target)
    return found
