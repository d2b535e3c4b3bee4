"""Reconstruction units of a model torch.fx could not trace whole (swapped in place, or in traced parts).

Without a graph of the whole model, the units are modules, or blocks of the parts traced as graphs. The module
tree is walked from the root: a quantized layer is a unit of its own; at block granularity, a module holding
between 2 and ``MAX_BLOCK_LAYERS`` quantized layers is one unit (a residual or inverted-residual block, an MLP),
provided every call to it takes one tensor and returns
one tensor with the same batch size, so that it can be run alone on cached inputs. A larger part traced as a
graph is cut into the blocks of its graph, as a model traced whole is; other larger modules, containers and
modules with other signatures are split into their children. The root is always split: it is where the
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
from torch import fx, nn

from lowbit.algorithms.blocks import Block, block_module, find_blocks
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
    calls it more than once (then capturing it can stop the pass at that call).

    A part traced as a graph (:mod:`lowbit.graph_parts`) with more layers than a block is cut into its graph's
    blocks (:func:`lowbit.algorithms.blocks.find_blocks`): such a unit is ``block`` of the part at ``name``,
    its input the output of the module that computes the block's input (or the part's own input), its output
    that of the module that computes the block's output."""

    name: str
    layers: tuple[str, ...]
    nbytes: int
    single_call: bool
    block: Block | None = None
    block_input: str | None = None  # the part's module computing the block's input (None: the part's input)
    block_output: str = ""  # the part's module computing the block's output

    @property
    def label(self) -> str:
        """Unique among the units of a model."""
        return self.name if self.block is None else f"{self.name}:{self.block.output}"

    def input_at(self) -> tuple[str, Literal["input", "output"]]:
        """The module whose input (or output) is the unit's input."""
        if self.block_input is None:
            return self.name, "input"
        return f"{self.name}.{self.block_input}", "output"

    def output_of(self) -> str:
        """The module whose output is the unit's output."""
        return self.name if self.block is None else f"{self.name}.{self.block_output}"

    def module(self, model: nn.Module) -> nn.Module:
        """What the unit computes, as a module of ``model`` (or sharing its submodules)."""
        part = model.get_submodule(self.name)
        return part if self.block is None else block_module(part, self.block)


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


# a block of a traced part, with the part's modules computing its input (None: the part's input) and output
PartBlock = tuple[Block, str | None, str]


def _part_blocks(part: fx.GraphModule) -> list[PartBlock] | None:
    """The blocks of a traced part, or None where a block's input or output is not the output of a module of
    the part (a hook could not capture it): then the part is split into its layers."""
    nodes = {n.name: n for n in part.graph.nodes}
    found: list[PartBlock] = []
    for block in find_blocks(part):
        src, dst = nodes[block.input], nodes[block.output]
        if dst.op != "call_module" or src.op not in ("placeholder", "call_module"):
            return None
        found.append((block, None if src.op == "placeholder" else src.target, dst.target))
    return found


def _select(name: str, module: nn.Module, calls: dict[str, _Calls], layer_names: dict[int, str],
            granularity: Literal["layer", "block"]) -> list[tuple[str, PartBlock | None]]:
    """Units inside ``module`` (depth first): a module's path, with the block when it is a block of a part."""
    seen = calls.get(name)
    if isinstance(module, QuantLayer):
        return [(name, None)] if seen and seen.replayable else []
    layers = [m for m in module.modules() if id(m) in layer_names]
    if not layers:
        return []
    if granularity == "block" and name and seen and seen.replayable:
        if 2 <= len(layers) <= MAX_BLOCK_LAYERS:
            return [(name, None)]
        if isinstance(module, fx.GraphModule) and (blocks := _part_blocks(module)) is not None:
            return [(name, block) for block in blocks]
    return [unit for child, sub in module.named_children()
            for unit in _select(f"{name}.{child}" if name else child, sub, calls, layer_names, granularity)]


def find_units(model: nn.Module, inputs: torch.Tensor, granularity: Literal["layer", "block"],
               device: torch.device) -> list[Unit]:
    """The units of ``model`` in the order the forward pass on ``inputs`` first completes them (the blocks of
    one part in graph order).

    Layers the calibration data never reaches are left out (they keep round-to-nearest).
    """
    calls = _probe_calls(model, inputs, device)
    layer_names = {id(m): n for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    selected = sorted(_select("", model, calls, layer_names, granularity), key=lambda unit: calls[unit[0]].order)
    units = []
    for name, part_block in selected:
        seen = calls[name]
        nbytes, single = max(seen.input_bytes, seen.output_bytes), seen.most_per_chunk == 1
        if part_block is None:
            module = model.get_submodule(name)
            layers = tuple(layer_names[id(m)] for m in module.modules() if id(m) in layer_names)
            units.append(Unit(name, layers, nbytes, single))
        else:
            block, block_input, block_output = part_block
            units.append(Unit(name, tuple(f"{name}.{n}" for n in block.layers), nbytes, single, block, block_input,
                              block_output))
    covered = {n for u in units for n in u.layers}
    left = [n for n in layer_names.values() if n in calls and n not in covered]
    if left:
        log.warning("%d reached layer(s) are called in a way that cannot be replayed on cached inputs (not one "
                    "batched tensor in and out) and keep round-to-nearest: %s", len(left), ", ".join(left[:5]))
    return units
