"""Reconstruction units: the traced graph cut into single-input, single-output blocks.

A cut is a point of the topologically ordered graph where exactly one tensor is alive (produced before,
used after). Between two cuts lies a block: a residual block (its skip connection keeps two tensors alive),
an attention or MLP sub-block of a transformer, or a plain conv/linear layer. Weight-free stretches (the
ReLU and output quantizer after an add) join the block before them, and consecutive single-layer blocks of
one submodule (the expand-depthwise-project chain of an inverted residual without skip) are merged, so
reconstruction sees the same units BRECQ does. Each block is materialized as a small
``GraphModule`` that shares its submodules (and therefore its parameters) with the full model.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from torch import fx

from lowbit.layers import QuantLayer
from lowbit.quantizer import Quantizer


@dataclass(frozen=True)
class Block:
    """Nodes (by name) from just after ``input`` to ``output`` inclusive, and the weight layers inside."""

    input: str
    output: str
    nodes: tuple[str, ...]
    layers: tuple[str, ...]


def _owner(layer: str, counts: dict[str, int]) -> str:
    """The deepest module containing ``layer`` and at least one other weight layer ('' is the root)."""
    parts = layer.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        prefix = ".".join(parts[:depth])
        if counts.get(prefix, 0) >= 2:
            return prefix
    return ""


def _unpacked(node: fx.Node) -> bool:
    """Whether ``node``'s value is a tuple or list that its users take apart (``chunk``, ``split``, ``size``):
    no block may end there, since a block hands one tensor on."""
    return bool(node.users) and all(u.op == "call_function" and u.target is operator.getitem for u in node.users)


def find_blocks(gm: fx.GraphModule) -> list[Block]:
    """Cut ``gm`` into blocks in execution order (only blocks holding weight layers are returned)."""
    modules = dict(gm.named_modules())
    nodes = [n for n in gm.graph.nodes if n.op not in ("get_attr", "output")]
    pos = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((pos.get(u, len(nodes)) for u in n.users), default=pos[n]) for n in nodes}
    cuts = [i for i, n in enumerate(nodes)
            if sum(1 for m in nodes[: i + 1] if last_use[m] > i) == 1 and last_use[n] > i and not _unpacked(n)]
    layer_of = {n: n.target for n in nodes if n.op == "call_module" and isinstance(modules[n.target], QuantLayer)}
    counts: dict[str, int] = {}
    for name in layer_of.values():
        parts = name.split(".")
        for depth in range(len(parts)):
            key = ".".join(parts[:depth])
            counts[key] = counts.get(key, 0) + 1
    raw: list[Block] = []
    for a, b in zip(cuts, cuts[1:]):
        inner = nodes[a + 1 : b + 1]
        layers = tuple(layer_of[n] for n in inner if n in layer_of)
        raw.append(Block(nodes[a].name, nodes[b].name, tuple(n.name for n in inner), layers))
    merged: list[Block] = []
    for blk in raw:
        prev = merged[-1] if merged else None
        if prev is None:
            merged.append(blk)
        elif not blk.layers or not prev.layers or (
                len(blk.layers) == 1 and _owner(blk.layers[0], counts) != ""
                and all(_owner(name, counts) == _owner(blk.layers[0], counts) for name in prev.layers)):
            # weight-free stretches (a ReLU, an output quantizer) end the block before them
            merged[-1] = Block(prev.input, blk.output, prev.nodes + blk.nodes, prev.layers + blk.layers)
        else:
            merged.append(blk)
    return [b for b in merged if b.layers]


def block_module(gm: fx.GraphModule, block: Block) -> fx.GraphModule:
    """A GraphModule computing ``block.output`` from ``block.input``, sharing ``gm``'s submodules."""
    graph = fx.Graph()
    by_name = {n.name: n for n in gm.graph.nodes}
    env: dict[fx.Node, fx.Node] = {by_name[block.input]: graph.placeholder(block.input)}

    def lookup(n: fx.Node) -> fx.Node:
        if n not in env:  # parameters and constants read inside the block
            if n.op != "get_attr":
                raise ValueError(f"block {block.input}->{block.output} reads {n.name} from outside")
            env[n] = graph.node_copy(n, lookup)
        return env[n]

    for name in block.nodes:
        node = by_name[name]
        env[node] = graph.node_copy(node, lookup)
    graph.output(env[by_name[block.output]])
    return fx.GraphModule(gm, graph, f"Block_{block.output}")


def block_quantizers(gm: fx.GraphModule, block: Block) -> list[Quantizer]:
    """The activation quantizers the block calls that need calibration (its static grids)."""
    by_name = {n.name: n for n in gm.graph.nodes}
    targets = [by_name[n].target for n in block.nodes if by_name[n].op == "call_module"]
    return [m for t in targets if isinstance(m := gm.get_submodule(t), Quantizer) and m.needs_calibration]
