"""``nn.MultiheadAttention`` rebuilt from separate projection layers, so that its weights are quantized.

torch's ``MultiheadAttention`` keeps the query, key and value projections in one packed parameter and applies
them, and its output projection, inside ``F.multi_head_attention_forward``: there is no ``Linear`` layer for
lowbit to swap, and torch.fx treats the whole module as one opaque call, so a transformer built on it (such as
torchvision's ViT) stayed largely float. :class:`SplitMultiheadAttention` computes the same function from four
``nn.Linear`` layers and explicit matmuls and softmax, which lowbit quantizes like any other (the projections'
weights and inputs, both attention matmuls' inputs); :func:`split_attention` puts it in place of every
``MultiheadAttention`` it can express (all but those with ``add_bias_kv`` or ``add_zero_attn``), and makes
``nn.TransformerEncoder`` stacks traceable. lowbit's tracer traces into torch's Transformer layers (with
torch's fused attention path switched off while it traces) instead of keeping them as opaque calls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                      dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _additive(mask: torch.Tensor, name: str, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True: masked) as -inf where masked, a float mask as it is: torch's own conversion, the one
    ``MultiheadAttention`` applies."""
    return F._canonical_mask(mask=mask, mask_name=name, other_type=None, other_name="", target_type=dtype,
                             check_other=False)


class SplitMultiheadAttention(nn.Module):
    """The function of an ``nn.MultiheadAttention`` (same arguments and outputs) with four ``nn.Linear`` layers."""

    # What torch's Transformer layers read to choose their fused path, which needs the packed weights: this
    # module answers so that they never take it.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = mha.embed_dim, mha.num_heads, mha.head_dim
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().chunk(3)
        else:
            weights = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach())
        biases = mha.in_proj_bias.detach().chunk(3) if mha.in_proj_bias is not None else (None,) * 3
        self.q_proj, self.k_proj, self.v_proj = (_linear(w, b) for w, b in zip(weights, biases))
        out = mha.out_proj
        self.out_proj = _linear(out.weight.detach(), out.bias.detach() if out.bias is not None else None)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, length, embed) -> (batch * heads, length, head_dim), torch's own layout for attention masks."""
        batch, length = x.shape[0], x.shape[1]
        return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2) \
            .reshape(batch * self.num_heads, length, self.head_dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        # is_causal only says that attn_mask is causal (MultiheadAttention requires the mask with it)
        # a traced graph is built for batched inputs, the only ones lowbit calibrates with
        unbatched = not is_fx_symbolic_tracing() and query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(0 if self.batch_first else 1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, target, source = query.shape[0], query.shape[1], key.shape[1]
        q = self._heads(self.q_proj(query)) * (1.0 / math.sqrt(self.head_dim))
        k, v = self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        scores = torch.matmul(q, k.transpose(1, 2))
        if attn_mask is not None:
            scores = scores + _additive(attn_mask, "attn_mask", scores.dtype)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, "key_padding_mask", scores.dtype)
            scores = (scores.reshape(batch, self.num_heads, target, source)
                      + padding.reshape(batch, 1, 1, source)).reshape(batch * self.num_heads, target, source)
        weights = F.dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)
        out = torch.matmul(weights, v).reshape(batch, self.num_heads, target, self.head_dim).transpose(1, 2) \
            .reshape(batch, target, self.embed_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
        if not need_weights:
            return out, None
        weights = weights.reshape(batch, self.num_heads, target, source)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights.squeeze(0) if unbatched else weights


class PlainTransformerEncoder(nn.Module):
    """An ``nn.TransformerEncoder`` without its nested-tensor fast path, whose checks torch.fx cannot trace:
    the same layers applied in turn, then the final norm (padded positions of a ``src_key_padding_mask`` get
    computed values where the fast path would write zeros; no other output changes)."""

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        self.layers, self.norm, self.num_layers = encoder.layers, encoder.norm, encoder.num_layers

    def forward(self, src: torch.Tensor, mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool | None = None) -> torch.Tensor:
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, is_causal=bool(is_causal),
                           src_key_padding_mask=src_key_padding_mask)
        return self.norm(output) if self.norm is not None else output


def splittable(mha: nn.MultiheadAttention) -> bool:
    """Whether :class:`SplitMultiheadAttention` expresses ``mha`` (extra key/value bias rows or a zero
    attention slot are left to torch's own module)."""
    return mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn


def split_attention(model: nn.Module) -> int:
    """Replace, in place, every ``nn.MultiheadAttention`` of ``model`` that :func:`splittable` accepts by a
    :class:`SplitMultiheadAttention` with the same weights, and every ``nn.TransformerEncoder`` by a
    :class:`PlainTransformerEncoder` (its fast path needs the packed weights). Returns how many attention
    modules were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.MultiheadAttention and splittable(child):
                setattr(parent, name, SplitMultiheadAttention(child).train(child.training))
                replaced += 1
            elif type(child) is nn.TransformerEncoder:
                setattr(parent, name, PlainTransformerEncoder(child).train(child.training))
    return replaced
