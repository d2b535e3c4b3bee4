"""Learned rounding for models torch.fx could not trace whole (swapped in place, or in traced parts).

There is no graph of the whole model to cut into blocks, so the units are modules
(:mod:`lowbit.algorithms.swap_units`): single quantized layers for AdaRound, blocks found in the module tree (or
in the graph of a traced part) for BRECQ, QDrop and EPTQ. Unit by unit, in execution order, forward hooks
capture the unit's input in the quantized model (already-reconstructed units upstream) and its output in the
float model, over the whole forward pass, since Python control flow decides which modules run. The unit is then
optimized by the same engine as traced models (:func:`lowbit.algorithms.unit.optimize_unit`).

A swapped layer quantizes its own input, and a part traced as a graph its input and what it computes, so the
unit's activation grids are inside the unit: BRECQ learns their step sizes, and QDrop drops quantization there
(each element keeps its unquantized value). Mixing in the float model's unit input as well, as traced blocks do,
ended several dB worse on a small residual network (the unit's own quantizer then drops a second time), so no
float inputs are cached.
"""

from __future__ import annotations

import logging
from typing import Callable, Literal

import torch
from torch import nn
from tqdm import tqdm

from lowbit.algorithms.activation_cache import ActivationCache
from lowbit.algorithms.blocks import block_quantizers
from lowbit.algorithms.method import RoundingMethod
from lowbit.algorithms.unit import EngineState, UnitData, float_copy, optimize_unit
from lowbit.algorithms.swap_units import CHUNK, Unit, find_units
from lowbit.graph import activation_quantizers
from lowbit.quantizer import Quantizer

log = logging.getLogger(__name__)

# A captured sample's origin: (chunk of the calibration set, call of the unit within that chunk's forward pass).
CallKey = tuple[int, int]
# Per-unit loss weights: (unit, origins of its cached samples, output rank) -> one row per sample, or None.
SwapWeighting = Callable[[Unit, list[CallKey], int], torch.Tensor | None]


class _Captured(Exception):
    """Raised from a hook to end a forward pass once everything wanted from it is captured."""


@torch.no_grad()
def _calls(model: nn.Module, module: nn.Module, x: torch.Tensor, want: Literal["input", "output"],
           stop_after_first: bool) -> list[torch.Tensor]:
    """The inputs (or outputs) of every call to ``module`` while ``model`` runs on ``x``.

    With ``stop_after_first`` the pass ends at the first call, so a unit early in the network costs only the
    layers before it.
    """
    captured: list[torch.Tensor] = []

    def keep(value: torch.Tensor) -> None:
        if not (stop_after_first and captured):  # a forward that catches the stop must not add calls
            # a copy, taken as the call starts or ends: an in-place operation further on would rewrite it
            captured.append(value.detach().clone())
        if stop_after_first:
            raise _Captured

    if want == "input":
        handle = module.register_forward_pre_hook(lambda m, args: keep(args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: keep(out))
    try:
        model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured


def capture_unit(qmodel: nn.Module, fp: nn.Module, unit: Unit, inputs: torch.Tensor, device: torch.device,
                 cache: ActivationCache) -> tuple[torch.Tensor, torch.Tensor, list[CallKey]] | None:
    """The unit's quantized-model inputs, its float-model outputs, and where each sample came from.

    Calls are paired in order within each chunk. A chunk whose quantized and float forward passes call the
    unit a different number of times (control flow that quantization changed) cannot be paired and is left
    out, as are calls whose per-sample shapes differ from the first call's. None when nothing pairs.
    """
    name = unit.label
    source, side = unit.input_at()
    q_module, fp_module = qmodel.get_submodule(source), fp.get_submodule(unit.output_of())
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    keys: list[CallKey] = []
    for c, start in enumerate(range(0, len(inputs), CHUNK)):
        x = inputs[start : start + CHUNK].to(device)
        q_in = _calls(qmodel, q_module, x, side, unit.single_call)
        fp_out = _calls(fp, fp_module, x, "output", unit.single_call)
        if len(q_in) != len(fp_out):
            log.debug("%s: chunk %d calls it %d times quantized, %d times float; left out", name, c, len(q_in),
                      len(fp_out))
            continue
        for k, (a, b) in enumerate(zip(q_in, fp_out)):
            if len(a) != len(b) or (xs and (a.shape[1:] != xs[0].shape[1:] or b.shape[1:] != ys[0].shape[1:])):
                continue
            xs.append(cache.copy(a))
            ys.append(cache.copy(b))
            keys.append((c, k))
    if not xs:
        return None
    x_q = cache.cat(xs)
    del xs  # the pieces go before the targets are joined: at most one tensor is held twice
    return x_q, cache.cat(ys), keys


def _unit_quantizers(qmodel: nn.Module, unit: Unit) -> list[Quantizer]:
    """The static activation grids inside the unit (its swapped layers' input grids, every grid of a part traced
    as a graph): what BRECQ tunes and QDrop drops."""
    if unit.block is None:
        inside = [q for _, q in activation_quantizers(qmodel.get_submodule(unit.name))]
    else:
        inside = block_quantizers(qmodel.get_submodule(unit.name), unit.block)
    return [q for q in inside if q.needs_calibration and q.state == "quantize"]


def reconstruct_swapped(qmodel: nn.Module, batches: list[torch.Tensor], method: RoundingMethod,
                        progress: bool = False, weighting: SwapWeighting | None = None,
                        units: list[Unit] | None = None) -> None:
    """Optimize the rounding of every reachable weight layer of a calibrated, module-swapped ``qmodel`` in place.

    ``units`` defaults to :func:`find_units` at the method's granularity; a caller that already found them
    (to compute loss weights for them) passes the same list.
    """
    name, options = method.name, method.options
    torch.manual_seed(options.seed)
    device = next(qmodel.parameters()).device
    fp = float_copy(qmodel)
    inputs = torch.cat(batches)
    if units is None:
        units = find_units(qmodel, inputs, method.granularity, device)
    largest = max([inputs.numel() * inputs.element_size()] + [u.nbytes for u in units])
    cache = ActivationCache.choose(options.cache, device, largest)
    log.info("%s: %d units found by module swapping; cached on %s", name, len(units), cache.kind)
    inputs = cache.copy(inputs)
    bar = tqdm(units, desc=name, disable=not progress, leave=False)
    state = EngineState(device, torch.Generator().manual_seed(options.seed), bar)
    for unit in bar:
        bar.set_description(f"{name} {unit.label}")
        captured = capture_unit(qmodel, fp, unit, inputs, device, cache)
        if captured is None:
            log.warning("%s: %s runs differently in the quantized and the float model; it keeps round-to-nearest",
                        name, unit.label)
            continue
        x_q, target, keys = captured
        weights = weighting(unit, keys, target.dim()) if weighting is not None else None
        weight_fn = (lambda idx, w=weights: w[idx].to(device)) if weights is not None else (lambda idx: None)
        layers = [qmodel.get_submodule(n) for n in unit.layers]
        optimize_unit(unit.module(qmodel), layers, _unit_quantizers(qmodel, unit),
                      UnitData(x_q, None, target, weight_fn), method, state)
