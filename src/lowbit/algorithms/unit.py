"""One unit's learned rounding: the optimization every reconstruction engine runs on a layer or a block.

Both engines (:mod:`lowbit.algorithms.reconstruct` for traced models, :mod:`lowbit.algorithms.swap_reconstruct`
for module-swapped ones) capture a unit's inputs and its float outputs and hand them here with the method
(:mod:`lowbit.algorithms.method`), whose hooks say what is optimized and what happens to activations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from lowbit.algorithms.method import RoundingMethod
from lowbit.algorithms.soft_rounding import SoftRounding, beta_schedule, install
from lowbit.layers import QuantLayer
from lowbit.quantizer import Quantizer


def float_copy(qmodel: nn.Module) -> nn.Module:
    """The same prepared model with every quantizer off: the float reference with identical structure."""
    fp = copy.deepcopy(qmodel)
    for m in fp.modules():
        if isinstance(m, Quantizer):
            m.state = "off"
    return fp


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
    # two optimizers, as in BRECQ: the step sizes' rate follows a cosine to zero while the rounding variables
    # keep theirs, which they need to the end to settle at 0 or 1 as the regularizer sharpens
    optimizers = [torch.optim.Adam([r.v for r in roundings], lr=options.lr)]
    scales, scale_lr = method.learned_step_sizes(quantizers)
    sched = None
    if scales:
        optimizers.append(torch.optim.Adam(scales, lr=scale_lr))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizers[-1], options.iters)
    with method.during_optimization(quantizers):
        for step in range(options.iters):
            idx = torch.randint(0, len(data.x_q), (min(options.batch_size, len(data.x_q)),), generator=gen)
            x_fp = data.x_fp[idx].to(device) if data.x_fp is not None else None
            x = method.step_input(data.x_q[idx].to(device), x_fp, gen)
            rec = _recon_loss(unit(x), data.target[idx].to(device), data.weight_fn(idx))
            beta = beta_schedule(step, options.iters, options.warmup, options.beta_start, options.beta_end)
            reg = sum(r.regularizer(beta) for r in roundings) if beta is not None else torch.zeros((), device=device)
            loss = rec + options.reg_weight * reg
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
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
