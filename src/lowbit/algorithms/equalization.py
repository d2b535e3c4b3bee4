"""Cross-layer equalization of activation ranges (Nagel et al. 2019, "Data-Free Quantization"), through ReLU
and through GDN/IGDN.

A static activation grid is one per tensor, so a channel whose values span a tenth of the widest channel's
range uses a tenth of the grid. Where a weight layer ``a`` feeds a weight layer ``b`` through a layer that is
equivariant to positive per-channel scaling, the channels can be rescaled for free: scaling ``a``'s output
channel ``i`` by ``s_i`` and dividing ``b``'s input channel ``i`` by ``s_i`` leaves the float model's outputs
unchanged. ReLU is positively homogeneous; GDN, ``x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)``, is too once
``gamma_ij`` is divided by ``s_j^2`` (IGDN likewise). Choosing ``s_i`` from each channel's calibrated range
brings every channel to the same span, so every channel gets the whole grid.

Moving a range into ``b``'s weights widens ``b``'s input-channel columns, which a coarse weight grid pays
for: chains are equalized only where ``b``'s weights have 8 bits or more. Below that, moving half of the range
(SmoothQuant's balance with the weight columns) did not pay on a codec's photos: the wider columns cost about
what the activations gained.

Chains are found inside ``nn.Sequential`` containers, where the order of the children is the order of the
data: ``weight layer, ReLU or GDN, weight layer``. A chain is skipped when a layer in it stays float, its
activations are not quantized on a static grid, a layer is grouped, or the task keeps it out (a codec's
entropy-parameter networks: equalizing brings each channel's calibrated range to the full grid, so a channel
that the calibration crops barely use loses the headroom that the widest channel's range gave it, and is
clipped where real images use it).
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.config import QuantConfig
from lowbit.device import model_device
from lowbit.hooks import watching_inputs

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU)
DEAD_CHANNEL = 1e-3  # a channel narrower than this share of the widest is treated as that narrow


@dataclass(frozen=True)
class Chain:
    """``producer -> between -> consumer`` inside one ``nn.Sequential``, by qualified module name."""

    producer: str
    between: str
    consumer: str
    through_gdn: bool  # GDN/IGDN between (its input is quantized too), else ReLU


def is_gdn(module: nn.Module) -> bool:
    """CompressAI's GDN/IGDN (recognised by its reparametrized ``gamma``, without importing CompressAI)."""
    return hasattr(module, "gamma_reparam") and hasattr(module, "beta_reparam")


def find_chains(model: nn.Module, config: QuantConfig, keep: Collection[str] = ()) -> list[Chain]:
    """Every chain the config quantizes with static activation grids, in model order, except those inside the
    modules named in ``keep``."""
    chains = []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or any(prefix == k or prefix.startswith(f"{k}.") for k in keep):
            continue
        named = [(f"{prefix}.{n}" if prefix else n, m) for n, m in seq.named_children()]
        for (na, a), (ng, g), (nb, b) in zip(named, named[1:], named[2:]):
            if (isinstance(a, WEIGHT_LAYERS) and isinstance(b, WEIGHT_LAYERS)
                    and (isinstance(g, HOMOGENEOUS) or is_gdn(g))
                    and getattr(a, "groups", 1) == 1 and getattr(b, "groups", 1) == 1
                    and _static(config, na, ng, nb, gdn=is_gdn(g))):
                chains.append(Chain(na, ng, nb, is_gdn(g)))
    return chains


def _static(config: QuantConfig, producer: str, between: str, consumer: str, gdn: bool) -> bool:
    """True when every layer of the chain is quantized, the consumer's weights have 8 bits or more and the
    activations it rescales have static integer grids (a float16 cast has no grid to fit channels to)."""
    names = (producer, between, consumer) if gdn else (producer, consumer)
    if any(config.keeps_float(n) for n in names):
        return False
    bits = config.weight_spec_for(consumer).bits
    if isinstance(bits, int) and bits < 8:
        return False
    readers = (between, consumer) if gdn else (consumer,)
    specs = [config.activation_spec_for(n) for n in readers]
    return all(spec is not None and not spec.dynamic and not spec.is_fp16 for spec in specs)


def _out_axis(layer: nn.Module) -> int:
    return 1 if isinstance(layer, nn.ConvTranspose2d) else 0


def _in_axis(layer: nn.Module) -> int:
    return 0 if isinstance(layer, nn.ConvTranspose2d) else 1


def _along(values: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def channel_ranges(model: nn.Module, names: set[str], batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The largest magnitude of each input channel of the modules ``names`` over ``batches``."""
    ranges: dict[str, torch.Tensor] = {}
    linear = {n for n in names if isinstance(model.get_submodule(n), nn.Linear)}

    def record(name: str, x: torch.Tensor) -> None:
        axis = x.dim() - 1 if name in linear else 1
        r = x.detach().abs().amax(dim=[d for d in range(x.dim()) if d != axis])
        ranges[name] = torch.maximum(ranges[name], r) if name in ranges else r

    device = model_device(model)
    with torch.no_grad(), watching_inputs(((n, model.get_submodule(n)) for n in names), record):
        for batch in batches:
            model(batch.to(device))
    return ranges


def channel_scales(activation: torch.Tensor) -> torch.Tensor:
    """Per-channel scales ``1 / range``, normalized to a geometric mean of one so that the weights keep their
    overall magnitude."""
    s = 1 / activation.clamp_min(activation.max() * DEAD_CHANNEL)
    return s / s.log().mean().exp()


@torch.no_grad()
def rescale(a: nn.Module, between: nn.Module, b: nn.Module, s: torch.Tensor) -> None:
    """Multiply ``a``'s output channels by ``s`` and divide ``b``'s input channels by it (in place)."""
    a.weight.mul_(_along(s, _out_axis(a), a.weight.dim()))
    if a.bias is not None:
        a.bias.mul_(s)
    if is_gdn(between):
        gamma = between.gamma_reparam(between.gamma) / (s * s).reshape(1, -1)
        between.gamma.copy_(between.gamma_reparam.init(gamma))
    b.weight.div_(_along(s, _in_axis(b), b.weight.dim()))


def equalize_ranges(model: nn.Module, batches: list[torch.Tensor], config: QuantConfig,
                    keep: Collection[str] = ()) -> nn.Module:
    """A copy of ``model`` with every chain's activation ranges equalized, except inside the modules named in
    ``keep`` (``model`` itself when there is no chain to equalize); the copy computes the same function in
    floating point."""
    chains = find_chains(model, config, keep)
    if not chains or not batches:
        return model
    model = copy.deepcopy(model)
    readers = {c.consumer for c in chains} | {c.between for c in chains if c.through_gdn}
    ranges = channel_ranges(model, readers, batches)
    for chain in chains:
        a, g, b = (model.get_submodule(n) for n in (chain.producer, chain.between, chain.consumer))
        r = ranges[chain.consumer]
        if chain.through_gdn:
            r = (r * ranges[chain.between]).sqrt()  # the GDN input and output share the scale
        rescale(a, g, b, channel_scales(r))
    return model
