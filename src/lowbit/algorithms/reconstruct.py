"""Reconstruction engine behind AdaRound, BRECQ, QDrop and EPTQ.

The traced model is cut into blocks (:mod:`lowbit.algorithms.blocks`). Block by block, in order, the
calibration inputs are pushed through the already-reconstructed quantized blocks and through a float copy;
each block's soft rounding variables (and, optionally, its activation step sizes) are then optimized so the
quantized block reproduces the float block's output, before its rounding is fixed. ``granularity="layer"``
optimizes each weight layer alone on its own output instead (AdaRound). Cached block inputs live on the
model's device, in CPU memory or in memory-mapped files, whichever is the fastest they fit in
(:mod:`lowbit.algorithms.activation_cache`). Models torch.fx could not trace are reconstructed by
:mod:`lowbit.algorithms.swap_reconstruct`, on modules found through forward hooks; both engines optimize a
unit with :func:`lowbit.algorithms.unit.optimize_unit`.
"""

from __future__ import annotations

import logging
from typing import Callable, Literal

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from tqdm import tqdm

from lowbit.algorithms.activation_cache import ActivationCache
from lowbit.algorithms.blocks import Block, block_module, block_quantizers, find_blocks
from lowbit.algorithms.method import RoundingMethod
from lowbit.algorithms.swap_reconstruct import reconstruct_swapped
from lowbit.algorithms.unit import EngineState, UnitData, float_copy, optimize_unit
from lowbit.errors import LowbitError

log = logging.getLogger(__name__)

# Per-block loss weights: (block, sample indices) -> tensor broadcasting against the block output, or None.
Weighting = Callable[[Block, torch.Tensor], torch.Tensor | None]


@torch.no_grad()
def _run(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device, cache: ActivationCache,
         chunk: int = 128) -> torch.Tensor:
    out = None
    for i in range(0, len(x), chunk):
        y = module(x[i : i + chunk].to(device))
        if out is None:
            out = cache.empty((len(x), *y.shape[1:]), y.dtype)
        out[i : i + len(y)].copy_(y)
    return out


def _largest_activation_bytes(fp: fx.GraphModule, blocks: list[Block], inputs: torch.Tensor,
                              device: torch.device) -> int:
    """Bytes of the largest block output (or input) over all samples: what one cached tensor needs."""
    ShapeProp(fp).propagate(inputs[:1].to(device))
    meta = {n.name: n.meta.get("tensor_meta") for n in fp.graph.nodes}
    per_sample = [inputs[0].numel() * inputs.element_size()]
    per_sample += [m.shape.numel() * m.dtype.itemsize for b in blocks
                   if hasattr(m := meta.get(b.output), "shape")]
    return max(per_sample) * len(inputs)


def _capture(module: nn.Module, layer: nn.Module, x: torch.Tensor, device: torch.device,
             want: Literal["input", "output"], cache: ActivationCache) -> torch.Tensor:
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        # a copy: an in-place operation further on (ReLU(inplace=True)) would otherwise rewrite it
        captured.append((inputs[0] if want == "input" else output).detach().clone())

    hook = layer.register_forward_hook(keep)

    def layer_value(chunk: torch.Tensor) -> torch.Tensor:
        module(chunk)
        return captured.pop()

    try:
        return _run(layer_value, x, device, cache)
    finally:
        hook.remove()


def reconstruct(qmodel: nn.Module, batches: list[torch.Tensor], method: RoundingMethod, progress: bool = False,
                weighting: Weighting | None = None) -> None:
    """Optimize the rounding of every weight layer of a calibrated ``qmodel`` in place, as ``method`` says.

    ``weighting`` gives per-sample loss weights for each block. A model torch.fx could not trace (module
    swapping) is reconstructed unit by unit with forward hooks instead.
    """
    name, options = method.name, method.options
    if not isinstance(qmodel, fx.GraphModule):
        if weighting is not None:
            raise LowbitError(f"{name}: block weights need a traced model; weight swapped units with "
                              "reconstruct_swapped")
        reconstruct_swapped(qmodel, batches, method, progress)
        return
    torch.manual_seed(options.seed)
    device = next(qmodel.parameters()).device
    fp = float_copy(qmodel)
    inputs = torch.cat(batches)
    blocks = find_blocks(qmodel)
    cache = ActivationCache.choose(options.cache, device, _largest_activation_bytes(fp, blocks, inputs, device))
    log.info("%s: block inputs cached on %s", name, cache.kind)
    cur_q = cache.copy(inputs)
    cur_fp = cur_q
    bar = tqdm(blocks, desc=name, disable=not progress, leave=False)
    state = EngineState(device, torch.Generator().manual_seed(options.seed), bar)
    for block in bar:
        bar.set_description(f"{name} {block.output}")
        qb, fb = block_module(qmodel, block), block_module(fp, block)
        target = _run(fb, cur_fp, device, cache)
        if method.granularity == "block":
            layers = [qmodel.get_submodule(n) for n in block.layers]
            weight_fn = (lambda idx, b=block: weighting(b, idx)) if weighting else (lambda idx: None)
            optimize_unit(qb, layers, block_quantizers(qmodel, block), UnitData(cur_q, cur_fp, target, weight_fn),
                          method, state)
        else:
            for layer_name in block.layers:
                layer, fp_layer = qmodel.get_submodule(layer_name), fp.get_submodule(layer_name)
                x_layer = _capture(qb, layer, cur_q, device, "input", cache)
                y_layer = _capture(fb, fp_layer, cur_fp, device, "output", cache)
                optimize_unit(layer, [layer], [], UnitData(x_layer, None, y_layer), method, state)
        cur_q, cur_fp = _run(qb, cur_q, device, cache), target
