"""Reconstruction engine behind AdaRound, BRECQ, QDrop and EPTQ.

The traced model is cut into blocks (:mod:`lowbit.algorithms.blocks`). Block by block, in order, the
calibration inputs are pushed through the already-reconstructed quantized blocks and through a float copy;
each block's soft rounding variables (and, optionally, its activation step sizes) are then optimized so the
quantized block reproduces the float block's output, before its rounding is fixed. ``granularity="layer"``
optimizes each weight layer alone on its own output instead (AdaRound). Cached block inputs live on the
model's device, in CPU memory or in memory-mapped files, whichever is the fastest they fit in
(:mod:`lowbit.algorithms.activation_cache`). Models torch.fx could not trace are reconstructed by
:mod:`lowbit.algorithms.swap_reconstruct`, on modules found through forward hooks, with the same
:func:`optimize_unit`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from tqdm import tqdm

from lowbit.algorithms.activation_cache import ActivationCache
from lowbit.algorithms.blocks import Block, block_module, find_blocks
from lowbit.algorithms.method import RoundingMethod
from lowbit.algorithms.soft_rounding import SoftRounding, beta_schedule, install
from lowbit.errors import LowbitError
from lowbit.layers import QuantLayer
from lowbit.quantizer import Quantizer

log = logging.getLogger(__name__)

# Per-block loss weights: (block, sample indices) -> tensor broadcasting against the block output, or None.
Weighting = Callable[[Block, torch.Tensor], torch.Tensor | None]


@dataclass
class UnitData:
    """What one unit is optimized on: its input in the quantized model, its input in the float model (where
    the engine keeps it), the float model's output, and per-sample loss weights (rows -> weights or None)."""

    x_q: torch.Tensor
    x_fp: torch.Tensor | None
    target: torch.Tensor
    weight_fn: Callable[[torch.Tensor], torch.Tensor | None] = lambda idx: None


@dataclass
class EngineState:
    """Where the engine computes, its random stream, and its progress bar."""

    device: torch.device
    gen: torch.Generator
    bar: tqdm | None


def float_copy(qmodel: nn.Module) -> nn.Module:
    """The same prepared model with every quantizer off: the float reference with identical structure."""
    fp = copy.deepcopy(qmodel)
    for m in fp.modules():
        if isinstance(m, Quantizer):
            m.state = "off"
    return fp


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


def _recon_loss(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Squared error summed over channels, averaged over samples and positions (BRECQ's convention)."""
    err = (out - target).pow(2)
    if weight is not None:
        err = err * weight
    return err.sum(1).mean() if err.dim() > 1 else err.mean()


@torch.no_grad()
def _unit_loss(unit: nn.Module, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
               device: torch.device) -> float:
    return _recon_loss(unit(x.to(device)), target.to(device), weight).item()


def optimize_unit(unit: nn.Module, layers: list[QuantLayer], quantizers: list[Quantizer], data: UnitData,
                  method: RoundingMethod, state: EngineState) -> float:
    """Optimize one unit's rounding (and the step sizes the method learns); returns its final loss.

    A short run can end with hard rounding worse than round-to-nearest (small layers fed by few samples,
    such as a classifier head); the unit then keeps round-to-nearest and its calibrated step sizes, so
    reconstruction never makes a unit worse on the calibration data.
    """
    options, device, gen = method.options, state.device, state.gen
    check = torch.arange(min(len(data.x_q), 256))
    nearest_loss = _unit_loss(unit, data.x_q[check], data.target[check], data.weight_fn(check), device)
    saved_scales = [q.scale.detach().clone() for q in quantizers]
    roundings: list[SoftRounding] = [install(layer) for layer in layers]
    groups = [{"params": [r.v for r in roundings], "lr": options.lr}]
    scales, scale_lr = method.learned_step_sizes(quantizers)
    if scales:
        groups.append({"params": scales, "lr": scale_lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, options.iters) if scales else None
    with method.during_optimization(quantizers):
        for step in range(options.iters):
            idx = torch.randint(0, len(data.x_q), (min(options.batch_size, len(data.x_q)),), generator=gen)
            x_fp = data.x_fp[idx].to(device) if data.x_fp is not None else None
            x = method.step_input(data.x_q[idx].to(device), x_fp, gen)
            rec = _recon_loss(unit(x), data.target[idx].to(device), data.weight_fn(idx))
            beta = beta_schedule(step, options.iters, options.warmup, options.beta_start, options.beta_end)
            reg = sum(r.regularizer(beta) for r in roundings) if beta is not None else torch.zeros((), device=device)
            loss = rec + options.reg_weight * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if state.bar is not None and step % 50 == 0:
                state.bar.set_postfix(loss=f"{rec.item():.4g}")
    for r in roundings:
        r.hard = True
    for q in quantizers:
        q.fix_scale()
    learned_loss = _unit_loss(unit, data.x_q[check], data.target[check], data.weight_fn(check), device)
    if learned_loss <= nearest_loss:
        return learned_loss
    for layer in layers:
        layer.rounding = None
    for q, scale in zip(quantizers, saved_scales):
        q.set_qparams(scale, q.zero_point)
    return nearest_loss


def _block_quantizers(gm: fx.GraphModule, block: Block) -> list[Quantizer]:
    by_name = {n.name: n for n in gm.graph.nodes}
    targets = [by_name[n].target for n in block.nodes if by_name[n].op == "call_module"]
    return [m for t in targets if isinstance(m := gm.get_submodule(t), Quantizer) and m.needs_calibration]


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
        # imported here: the swapped-model engine builds on this module's optimize_unit
        from lowbit.algorithms.swap_reconstruct import reconstruct_swapped

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
            optimize_unit(qb, layers, _block_quantizers(qmodel, block), UnitData(cur_q, cur_fp, target, weight_fn),
                          method, state)
        else:
            for layer_name in block.layers:
                layer, fp_layer = qmodel.get_submodule(layer_name), fp.get_submodule(layer_name)
                x_layer = _capture(qb, layer, cur_q, device, "input", cache)
                y_layer = _capture(fb, fp_layer, cur_fp, device, "output", cache)
                optimize_unit(layer, [layer], [], UnitData(x_layer, None, y_layer), method, state)
        cur_q, cur_fp = _run(qb, cur_q, device, cache), target
