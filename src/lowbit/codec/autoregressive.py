"""Exact integer entropy parameters for autoregressive codecs (CompressAI's joint autoregressive and
hierarchical priors: ``mbt2018``, ``cheng2020-anchor``, ``cheng2020-attn``).

Such a codec codes its latents one position at a time: the mean and scale of each latent come from the side
information (``h_s``, see :mod:`lowbit.codec.exact`) and from a masked convolution over the latents already
decoded (``context_prediction``), joined by ``entropy_parameters``. The decoder repeats this computation
position by position, and a mean or scale one ulp away from the encoder's changes the table, or the value
decoded, and everything after it. Once quantized on static grids, both networks are computed here in exact
integers instead: the decoded latents (integers plus means that are themselves fixed-point results) rounded
onto the context model's grid, integer sums over the masked kernel, fixed-point requantization onto the grid of
``entropy_parameters``' input, where the side information is rounded too, then that chain as in ``h_s``.

The coding loops are CompressAI's (``_compress_ar``/``_decompress_ar``, same range coder calls and order),
bound to the model instance with only the parameter computation replaced; nothing is stored in the state, and
each call plans from the layers as they are then (their device included).
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.codec.exact import Stage, chain_stages, has_exact_path, input_codes, on_static_grids, plan_chain, \
    run_plan
from lowbit.codec.masked_conv import QMaskedConv2d
from lowbit.errors import LowbitError
from lowbit.quantizer import Quantizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContextPlan:
    """The context model and the entropy-parameter chain, ready for exact arithmetic."""

    context: Stage  # requantized onto the first entropy-parameter layer's input grid
    parameters: list[Stage]  # ending in a fixed-point output: scales, then means

    @property
    def joint_grid(self) -> Quantizer:
        """The grid of ``cat(side information, context)``, the first entropy-parameter layer's input."""
        return self.parameters[0].layer.input_quant

    def gaussian_parameters(self, side: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scales, means)`` at one position from its side-information codes ``side`` ``(1, C, 1, 1)`` and
        the decoded latents ``window`` ``(1, M, k, k)`` around it (zero where nothing is decoded yet)."""
        layer = self.context.layer
        zp = int(layer.input_quant.zero_point.reshape(-1)[0])
        codes = input_codes(layer.input_quant, window) - zp
        context = self.context.output(F.conv2d(codes.double(), self.context.weight), torch.float32)
        out = run_plan(self.parameters, torch.cat((side, context), dim=1), window.dtype)
        scales, means = out.chunk(2, 1)
        return scales, means


def context_plan(codec: nn.Module) -> ContextPlan | None:
    """The codec's context plan, or None when it is not an autoregressive codec whose context model and
    entropy-parameter network are quantized on static grids with sums that fit exact arithmetic."""
    context = getattr(codec, "context_prediction", None)
    network = getattr(codec, "entropy_parameters", None)
    if not isinstance(context, QMaskedConv2d) or network is None or not on_static_grids(context):
        return None
    if context.stride != (1, 1) or context.dilation != (1, 1) or context.groups != 1:
        return None
    stages = chain_stages(network)
    parameters = None if stages is None else plan_chain(stages, None)
    if parameters is None:
        return None
    first = plan_chain([(context, None, 1)], parameters[0].layer.input_quant)
    return None if first is None else ContextPlan(first[0], parameters)


def _plan_and_tables(codec: nn.Module) -> tuple[ContextPlan, list, list, list]:
    """What both coding loops start from: the context plan, and the Gaussian conditional's tables as the range
    coder takes them (cumulative frequencies, their lengths, offsets)."""
    plan = context_plan(codec)
    if plan is None:
        raise LowbitError("the codec's context model is no longer quantized on static integer grids; quantize it "
                          "again (lowbit codec quantize) before coding with it")
    gaussian = codec.gaussian_conditional
    return plan, gaussian.quantized_cdf.tolist(), gaussian.cdf_length.tolist(), gaussian.offset.tolist()


def _compress_ar(self: nn.Module, y_hat: torch.Tensor, params: torch.Tensor, height: int, width: int,
                 kernel_size: int, padding: int) -> bytes:
    """CompressAI's coding loop for one image, with the means and scales from :class:`ContextPlan`."""
    from compressai.ans import BufferedRansEncoder

    plan, cdf, cdf_lengths, offsets = _plan_and_tables(self)
    side = input_codes(plan.joint_grid, params)
    symbols, indexes = [], []
    for h in range(height):
        for w in range(width):
            window = y_hat[:, :, h:h + kernel_size, w:w + kernel_size]
            scales, means = plan.gaussian_parameters(side[:, :, h:h + 1, w:w + 1], window)
            y_q = self.gaussian_conditional.quantize(window[:, :, padding:padding + 1, padding:padding + 1],
                                                     "symbols", means)
            y_hat[:, :, h + padding:h + padding + 1, w + padding:w + padding + 1] = y_q + means
            symbols.extend(y_q.reshape(-1).tolist())
            indexes.extend(self.gaussian_conditional.build_indexes(scales).reshape(-1).tolist())
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(symbols, indexes, cdf, cdf_lengths, offsets)
    return encoder.flush()


def _decompress_ar(self: nn.Module, y_string: bytes, y_hat: torch.Tensor, params: torch.Tensor, height: int,
                   width: int, kernel_size: int, padding: int) -> None:
    """CompressAI's decoding loop for one image (filling ``y_hat``), with the means and scales from
    :class:`ContextPlan`."""
    from compressai.ans import RansDecoder

    plan, cdf, cdf_lengths, offsets = _plan_and_tables(self)
    decoder = RansDecoder()
    decoder.set_stream(y_string)
    side = input_codes(plan.joint_grid, params)
    for h in range(height):
        for w in range(width):
            window = y_hat[:, :, h:h + kernel_size, w:w + kernel_size]
            scales, means = plan.gaussian_parameters(side[:, :, h:h + 1, w:w + 1], window)
            indexes = self.gaussian_conditional.build_indexes(scales).reshape(-1).tolist()
            values = decoder.decode_stream(indexes, cdf, cdf_lengths, offsets)
            values = torch.tensor(values, dtype=y_hat.dtype, device=y_hat.device).reshape(1, -1, 1, 1)
            y_hat[:, :, h + padding:h + padding + 1, w + padding:w + padding + 1] = \
                self.gaussian_conditional.dequantize(values, means)


def has_exact_context(codec: nn.Module) -> bool:
    """Whether the codec codes with :func:`install_exact_context`'s loops."""
    bound = getattr(codec, "_compress_ar", None)
    return getattr(bound, "__func__", None) is _compress_ar


def install_exact_context(codec: nn.Module) -> bool:
    """Code an autoregressive codec's latents with exact means and scales from now on, if it is quantized in a
    way that allows it. Returns whether the exact loops are in place."""
    if not hasattr(codec, "context_prediction"):
        return False
    if not has_exact_path(codec) or context_plan(codec) is None:
        if isinstance(codec.context_prediction, QMaskedConv2d):
            log.info("the context model is quantized but not on static integer grids throughout; its means and "
                     "scales are computed in float, so decoding on another machine is not guaranteed bit-exact")
        return False
    codec._compress_ar = types.MethodType(_compress_ar, codec)
    codec._decompress_ar = types.MethodType(_decompress_ar, codec)
    return True
