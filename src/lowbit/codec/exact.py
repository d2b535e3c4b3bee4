"""Exact integer arithmetic for a quantized codec's entropy parameters, so that decoding never depends on the
machine.

In a hyperprior codec the decoder recomputes the Gaussian scales from the side information (``h_s(z_hat)``)
and picks each latent's probability table from them. If the encoder and the decoder compute a scale even one
ulp apart (another thread count, batch, library or device sums in another order) and it falls on the other
side of a table boundary, the decoder reads the bitstream with the wrong table and everything after it is
garbage. Float codecs have this failure; here the quantized ``h_s`` is computed in integers instead:

- its input is rounded onto the first layer's grid (one IEEE division and rounding per element, the same
  everywhere);
- each convolution multiplies integer codes; the products and sums are integers far below 2^53, so computing
  them in float64 gives the exact integer result whatever order the sum is taken in;
- requantization onto the next layer's grid is fixed-point: an int64 multiplier and shift per channel, with the
  bias in the same fixed point; a ReLU or LeakyReLU takes a second multiplier and bias (the slope's multiples,
  zero for ReLU) where the value is negative, and a PixelShuffle moves the integer codes;
- the last layer's output is a fixed-point number turned into a float exactly.

This needs static integer grids on every input of ``h_s`` (a dynamic range depends on the batch), which
:func:`lowbit.codec.task.configure` arranges. The path is installed as a forward hook on ``h_s`` that replaces
its output, so the saved state and CompressAI's own ``compress``/``decompress`` are unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from lowbit import qmath
from lowbit.codec.masked_conv import QMaskedConv2d
from lowbit.layers import QConv2d, QConvTranspose2d, QuantLayer
from lowbit.quantizer import Quantizer

log = logging.getLogger(__name__)

MAX_EXACT = 2**53  # integers up to this size are exact in float64
MAX_INT64_BITS = 62  # headroom below int64's range for products and the rounding offset
MAX_SHIFT = 61  # fixed-point fraction bits at most (2^shift must fit int64)
MIN_MULTIPLIER_BITS = 24  # a requantization multiplier at least as precise as a float32 scale
EXACT_LAYERS = (QConv2d, QConvTranspose2d)


def _flat(module: nn.Module) -> list[nn.Module]:
    """``module``'s parts in the order they run, nested ``nn.Sequential`` opened (a sub-pixel convolution is a
    Sequential of a convolution and a PixelShuffle)."""
    if type(module) is nn.Sequential:
        return [part for child in module for part in _flat(child)]
    return [module]


Chain = list[tuple[QuantLayer, "float | None", int]]


def chain_stages(network: nn.Module) -> Chain | None:
    """``network`` as (layer, negative slope of the activation after it, pixel-shuffle factor after it) triples,
    or None when it is not a chain this module computes exactly. The slope is None without an activation, 0 for
    ReLU, LeakyReLU's otherwise; the factor is 1 without a PixelShuffle (which moves integer codes around, and
    commutes with the activation)."""
    if type(network) in EXACT_LAYERS or isinstance(network, QMaskedConv2d):  # a network of one layer
        return [(network, None, 1)] if on_static_grids(network) else None
    if type(network) is not nn.Sequential:
        return None
    stages: Chain = []
    for module in _flat(network):
        if type(module) in EXACT_LAYERS or isinstance(module, QMaskedConv2d):
            stages.append((module, None, 1))
        elif not stages:
            return None
        elif isinstance(module, (nn.ReLU, nn.LeakyReLU)) and stages[-1][1] is None:
            slope = 0.0 if isinstance(module, nn.ReLU) else float(module.negative_slope)
            if not 0 <= slope < 1:
                return None
            stages[-1] = (stages[-1][0], slope, stages[-1][2])
        elif isinstance(module, nn.PixelShuffle) and stages[-1][2] == 1:
            stages[-1] = (stages[-1][0], stages[-1][1], int(module.upscale_factor))
        else:
            return None
    return stages if stages and all(on_static_grids(layer) for layer, _, _ in stages) else None


def on_static_grids(layer: QuantLayer) -> bool:
    """A frozen layer whose weight and input are on fixed integer grids (no fp16, no per-batch range)."""
    q, wq = layer.input_quant, layer.weight_quant
    return layer.frozen and not wq.spec.is_fp16 and q is not None and not q.spec.is_fp16 and not q.spec.dynamic \
        and q.state == "quantize" and wq.state == "quantize"


def _integer_weight(layer: QuantLayer) -> torch.Tensor:
    """The weight codes minus their zero points, as float64 integers."""
    _, zp = layer.weight_quant.grid(layer.weight.dim())
    return (layer.qweight.to(torch.int64) - zp.to(torch.int64)).double()


def _channel_scales(layer: QuantLayer) -> list[float]:
    """Per output channel weight scales (one per channel even for a per-tensor grid)."""
    out = layer.out_channels
    scales = layer.weight_quant.scale.double().reshape(-1).tolist()
    return scales * out if len(scales) == 1 else scales


def _accumulator_bound(layer: QuantLayer, w: torch.Tensor) -> int:
    qmin, qmax = layer.input_quant.qrange
    per_output = w.abs().sum(dim=[d for d in range(w.dim()) if d != (1 if isinstance(layer, QConvTranspose2d) else 0)])
    return int(per_output.max()) * (qmax - qmin)


def _fixed_point(layer: QuantLayer, w: torch.Tensor, target: float,
                 slope: float | None) -> tuple[torch.Tensor, ...] | None:
    """Per-channel multiplier, bias and shift (int64, on the layer's device) that take an accumulator onto a grid
    of step ``target`` (the next layer's input step, or the last layer's output unit):
    ``(acc * multiplier + bias) / 2^shift``,
    then the multiplier and bias of ``slope`` times the same value (what a leaky activation keeps of a negative
    one; the first pair again without an activation) at the same shift. Each channel's shift gives its
    multiplier at least ``MIN_MULTIPLIER_BITS`` significant bits; None when that cannot fit int64."""
    s_in = float(layer.input_quant.scale.double().reshape(-1)[0])
    ratios = [s_in * s_w / target for s_w in _channel_scales(layer)]
    bias = layer.bias.double().tolist() if layer.bias is not None else [0.0] * len(ratios)
    acc_bits = max(1, _accumulator_bound(layer, w)).bit_length()
    negative = 1.0 if slope is None else slope
    multipliers, offsets, shifts, negative_multipliers, negative_offsets = [], [], [], [], []
    for ratio, b in zip(ratios, bias):
        if ratio <= 0:
            return None
        room = MAX_INT64_BITS - max(acc_bits + math.ceil(math.log2(ratio)),
                                    math.ceil(math.log2(abs(b) / target + 1))) - 1
        shift = min(MAX_SHIFT, room)
        multiplier = round(ratio * 2**shift)
        if shift < 1 or multiplier < 2**MIN_MULTIPLIER_BITS:
            return None
        multipliers.append(multiplier)
        offsets.append(round(b / target * 2**shift))
        shifts.append(shift)
        negative_multipliers.append(round(negative * ratio * 2**shift))
        negative_offsets.append(round(negative * b / target * 2**shift))
    return tuple(torch.tensor(v, dtype=torch.int64, device=w.device)
                 for v in (multipliers, offsets, shifts, negative_multipliers, negative_offsets))


def _output_unit(layer: QuantLayer) -> float:
    """The unit of a last layer's fixed-point output: 1, or for a layer whose accumulator step (input step times
    weight step) is too fine for that, the smallest such step; the output is then multiplied by it in float64,
    one IEEE product, the same everywhere."""
    s_in = float(layer.input_quant.scale.double().reshape(-1)[0])
    step = min(_channel_scales(layer)) * s_in
    return 1.0 if step >= 2.0**(MIN_MULTIPLIER_BITS - MAX_SHIFT) else step


@dataclass(frozen=True)
class Stage:
    """One layer of ``h_s`` ready for integer arithmetic."""

    layer: QuantLayer
    weight: torch.Tensor  # the weight codes minus their zero points, float64 integers
    multiplier: torch.Tensor
    offset: torch.Tensor
    shift: torch.Tensor
    negative_multiplier: torch.Tensor  # where the output is negative: the activation's slope times the value
    negative_offset: torch.Tensor
    next_input: Quantizer | None  # the grid the output is requantized onto; None: a fixed-point output
    shuffle: int  # PixelShuffle's factor after the layer, 1 for none
    unit: float = 1.0  # what one fixed-point unit of a last layer's output is worth

    def output(self, accumulator: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The layer's output from its accumulator (integers in float64, exact below 2^53): int64 codes on
        ``next_input``'s grid, or the fixed-point value as ``dtype``, after the activation and the shuffle."""
        acc = accumulator.to(torch.int64)
        view = (1, -1) + (1,) * (acc.dim() - 2)
        y = acc * self.multiplier.view(view) + self.offset.view(view)
        y = torch.where(y >= 0, y, acc * self.negative_multiplier.view(view) + self.negative_offset.view(view))
        unit = torch.ones_like(self.shift.view(view)) << self.shift.view(view)  # 2^shift per channel
        if self.next_input is None:
            out = y.double() / unit.double()  # int64 to float64 rounds the same everywhere
            out = (out if self.unit == 1.0 else out * self.unit).to(dtype)
        else:
            zero_point = int(self.next_input.zero_point.reshape(-1)[0])
            out = (torch.div(y + (unit >> 1), unit, rounding_mode="floor") + zero_point).clamp(*self.next_input.qrange)
        return nn.functional.pixel_shuffle(out, self.shuffle) if self.shuffle > 1 else out


def plan_chain(stages: Chain, last_grid: Quantizer | None) -> list[Stage] | None:
    """The stages ready for exact arithmetic, each requantized onto the next one's input grid and the last onto
    ``last_grid`` (None: the last layer's output is a fixed-point number), or None when their sums and fixed-point
    requantization do not fit exact arithmetic."""
    plan = []
    for i, (layer, slope, shuffle) in enumerate(stages):
        w = _integer_weight(layer)
        if _accumulator_bound(layer, w) >= MAX_EXACT:
            return None
        nxt = stages[i + 1][0].input_quant if i + 1 < len(stages) else last_grid
        unit = _output_unit(layer) if nxt is None else 1.0
        fixed = _fixed_point(layer, w, float(nxt.scale.double().reshape(-1)[0]) if nxt is not None else unit, slope)
        if fixed is None:
            return None
        plan.append(Stage(layer, w, *fixed, nxt, shuffle, unit))
    return plan


def _plan(h_s: nn.Module) -> list[Stage] | None:
    stages = chain_stages(h_s)
    return None if stages is None else plan_chain(stages, None)


def input_codes(grid: Quantizer, x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded onto ``grid`` as int64 codes: one IEEE division and rounding per element."""
    scale, zp = grid.grid(x.dim())
    return qmath.quantize(x.float(), scale, zp, *grid.qrange).to(torch.int64)


def run_plan(plan: list[Stage], q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The stages on input codes ``q`` (int64, on the first layer's input grid): codes on the last stage's
    output grid, or the last layer's fixed-point output as ``dtype``."""
    for stage in plan:
        zp_in = int(stage.layer.input_quant.zero_point.reshape(-1)[0])
        q = stage.output(stage.layer.weight_op((q - zp_in).double(), stage.weight), dtype)
    return q


def integer_forward(h_s: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``h_s(x)`` in exact integer arithmetic (see the module docstring); ``h_s`` must pass :func:`supports`."""
    plan = _plan(h_s)
    return run_plan(plan, input_codes(plan[0].layer.input_quant, x), x.dtype)


def supports(h_s: nn.Module) -> bool:
    """True when ``h_s`` is a chain of frozen conv layers (ReLU, LeakyReLU or PixelShuffle between) on static
    integer grids whose sums and fixed-point requantization fit exact arithmetic."""
    return _plan(h_s) is not None


class ExactPath:
    """Forward hook on a parameter network replacing its float output by :func:`integer_forward`'s."""

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> torch.Tensor:
        return integer_forward(module, inputs[0])


# CompressAI's names for the networks whose outputs choose each latent's probability table (at any depth: its
# latent-codec models nest them), and for the container of ELIC's channel-context networks
PARAMETER_NETWORKS = ("h_s", "context_prediction", "entropy_parameters")
CHANNEL_CONTEXT = "channel_context"


def parameter_networks(codec: nn.Module) -> list[tuple[str, nn.Module]]:
    """The codec's networks that compute entropy parameters, by qualified name (those with layers: CompressAI
    puts an ``nn.Identity`` where a latent codec passes its parameters on unchanged)."""
    found = []
    for name, module in codec.named_modules():
        parts = name.split(".")
        named = parts[-1] in PARAMETER_NETWORKS or (len(parts) > 1 and parts[-2] == CHANNEL_CONTEXT)
        if named and any(isinstance(m, (QuantLayer, nn.Conv2d, nn.ConvTranspose2d)) for m in module.modules()):
            found.append((name, module))
    return found


def is_exact(network: nn.Module) -> bool:
    return any(isinstance(h, ExactPath) for h in network._forward_hooks.values())


def has_exact_path(codec: nn.Module) -> bool:
    """Whether the codec's hyperprior synthesis ``h_s`` (the side information's entropy parameters) is exact."""
    h_s = getattr(codec, "h_s", None)
    return h_s is not None and is_exact(h_s)


def install_exact_path(codec: nn.Module) -> bool:
    """Compute each of the codec's parameter networks exactly from now on where it is quantized in a way that
    allows it. Returns whether every one of them is exact."""
    networks = parameter_networks(codec)
    for name, network in networks:
        if is_exact(network):
            continue
        if supports(network):
            network.register_forward_hook(ExactPath())
        elif any(isinstance(m, QuantLayer) for m in network.modules()):
            log.info(f"{name} is quantized but not on static integer grids throughout; it is computed in float, "
                     "so decoding on another machine is not guaranteed bit-exact")
    return bool(networks) and all(is_exact(network) for _, network in networks)
