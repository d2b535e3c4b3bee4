"""Reconstruction units of a module-swapped model (one torch.fx could not trace).

Without a graph, the units are modules. The module tree is walked from the root: a quantized layer is a unit
of its own; at block granularity, a module holding between 2 and ``MAX_BLOCK_LAYERS`` quantized layers is one
unit (a residual or inverted-residual block, an MLP), provided every call to it takes one tensor and returns
one tensor with the same batch size, so that it can be run alone on cached inputs. Larger modules, containers
and modules with other signatures are split into their children. The root is always split: it is where the
Python control flow that defeated tracing usually lives, and it is never run as a unit.

Which modules are called, in what order and how often is learned from one pass over the calibration data
with forward hooks, because data-dependent control flow may skip a module or call it several times.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lowbit.layers import QuantLayer
from lowbit.quantizer import Quantizer

log = logging.getLogger(__name__)

# BRECQ's blocks hold 2-4 weight layers (basic and bottleneck residual blocks, inverted residuals); larger
# modules are whole stages, whose joint reconstruction the BRECQ paper found worse than block by block.
MAX_BLOCK_LAYERS = 4
# Samples per forward pass, for every pass over the calibration data (probe, capture, Hessian). One size for
# all of them keeps the calls of a batch-dependent forward identical from pass to pass.
CHUNK = 64


@dataclass(frozen=True)
class Unit:
    """A module optimized as one unit: its path, the quantized layers inside, the bytes of its largest cached
    tensor (input or output, summed over every call on the calibration set), and whether no forward pass
    calls it more than once (then capturing it can stop the pass at that call)."""

    name: str
    layers: tuple[str, ...]
    nbytes: int
    single_call: bool


@dataclass
class _Calls:
    """What the probe pass saw of one module."""

    order: int
    replayable: bool = True
    input_bytes: int = 0
    output_bytes: int = 0
    in_chunk: int = 0  # calls during the current forward pass
    most_per_chunk: int = 0


def _replayable(args: tuple, kwargs: dict, output: object) -> bool:
    """One batched tensor in, one tensor out with the same batch size: the module can run on cached inputs."""
    if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
        return False
    return args[0].dim() > 0 and output.dim() > 0 and args[0].shape[0] == output.shape[0]


@torch.no_grad()
def _probe_calls(model: nn.Module, inputs: torch.Tensor, device: torch.device) -> dict[str, _Calls]:
    """Every submodule the forward pass reaches (quantizers aside), in order of its first completed call."""
    calls: dict[str, _Calls] = {}
    counter = itertools.count()

    def hook(name: str):
        def record(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            seen = calls.setdefault(name, _Calls(next(counter)))
            seen.replayable = seen.replayable and _replayable(args, kwargs, output)
            seen.in_chunk += 1
            if isinstance(args[0] if args else None, torch.Tensor):
                seen.input_bytes += args[0].numel() * args[0].element_size()
            if isinstance(output, torch.Tensor):
                seen.output_bytes += output.numel() * output.element_size()
        return record

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in model.named_modules()
               if n and not isinstance(m, Quantizer)]
    try:
        for i in range(0, len(inputs), CHUNK):
            model(inputs[i : i + CHUNK].to(device))
            for seen in calls.values():
                seen.most_per_chunk, seen.in_chunk = max(seen.most_per_chunk, seen.in_chunk), 0
    finally:
        for h in handles:
            h.remove()
    return calls


def _select(name: str, module: nn.Module, calls: dict[str, _Calls], layer_names: dict[int, str],
            granularity: Literal["layer", "block"]) -> list[str]:
    """Unit names inside ``module`` (depth first)."""
    seen = calls.get(name)
    if isinstance(module, QuantLayer):
        return [name] if seen and seen.replayable else []
    layers = [m for m in module.modules() if id(m) in layer_names]
    if not layers:
        return []
    if granularity == "block" and name and 2 <= len(layers) <= MAX_BLOCK_LAYERS and seen and seen.replayable:
        return [name]
    return [unit for child, sub in module.named_children()
            for unit in _select(f"{name}.{child}" if name else child, sub, calls, layer_names, granularity)]


def find_units(model: nn.Module, inputs: torch.Tensor, granularity: Literal["layer", "block"],
               device: torch.device) -> list[Unit]:
    """The units of a swapped ``model`` in the order the forward pass on ``inputs`` first completes them.

    Layers the calibration data never reaches are left out (they keep round-to-nearest).
    """
    calls = _probe_calls(model, inputs, device)
    layer_names = {id(m): n for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    names = sorted(dict.fromkeys(_select("", model, calls, layer_names, granularity)), key=lambda n: calls[n].order)
    units = []
    for name in names:
        module = model.get_submodule(name)
        layers = tuple(layer_names[id(m)] for m in module.modules() if id(m) in layer_names)
        seen = calls[name]
        units.append(Unit(name, layers, max(seen.input_bytes, seen.output_bytes), seen.most_per_chunk == 1))
    covered = {n for u in units for n in u.layers}
    left = [n for n in layer_names.values() if n in calls and n not in covered]
    if left:
        log.warning("%d reached layer(s) are called in a way that cannot be replayed on cached inputs (not one "
                    "batched tensor in and out) and keep round-to-nearest: %s", len(left), ", ".join(left[:5]))
    return units
