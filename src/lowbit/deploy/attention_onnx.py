"""``scaled_dot_product_attention`` on inputs of any rank, for the ONNX exporter.

torch's ONNX translation of ``F.scaled_dot_product_attention`` (onnxscript's torch_lib) takes 4-d queries, keys
and values only; models that attend within windows call it on 5-d ones (timm's Twins: batch, windows, heads,
tokens, width), and the export of the whole model failed there. Such a call is written out here as what the
function computes, ``softmax(queries @ keys^T * scale + mask) @ values``, whose matmuls broadcast over any
leading dimensions; 4-d calls, and calls with causal masking, dropout or grouped-query heads, keep the
library's own translation.
"""

from __future__ import annotations

import math

import torch
from onnxscript import ir
from onnxscript import opset21 as op
from onnxscript.function_libs.torch_lib.ops.nn import aten_scaled_dot_product_attention


def _rank(value) -> int | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else len(shape)


def scaled_dot_product_attention_onnx(query, key, value, attn_mask=None, dropout_p: float = 0.0,
                                      is_causal: bool = False, scale: float | None = None,
                                      enable_gqa: bool = False):
    rank = _rank(query)
    width = query.shape[-1] if rank else None
    plain = not (is_causal or dropout_p or enable_gqa) and (scale is not None or isinstance(width, int))
    if rank in (None, 4) or _rank(key) != rank or _rank(value) != rank or not plain:
        return aten_scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                                 enable_gqa)
    factor = 1.0 / math.sqrt(width) if scale is None else scale
    swapped = [*range(rank - 2), rank - 1, rank - 2]
    scores = op.Mul(op.MatMul(query, op.Transpose(key, perm=swapped)), op.Constant(value_float=factor))
    if attn_mask is not None and attn_mask.dtype == ir.DataType.BOOL:
        scores = op.Where(attn_mask, scores, op.Constant(value_float=float("-inf")))
    elif attn_mask is not None:
        scores = op.Add(scores, attn_mask)
    return op.MatMul(op.Softmax(scores, axis=-1), value)


ATTENTION_TRANSLATIONS = {
    torch.ops.aten.scaled_dot_product_attention.default: scaled_dot_product_attention_onnx,
}
