"""torchvision's Swin attention rebuilt with its projections called as layers, so that they are quantized.

torchvision's ``ShiftedWindowAttention`` hands its ``qkv`` and ``proj`` weights to one function,
``shifted_window_attention``, which applies them with ``F.linear`` inside; torch.fx keeps that function as one
opaque call (torchvision wraps it), so the weights stayed float (a third of a Swin-T's) and the attention
matmuls ran in float. :class:`WindowAttention` computes the same function in steps: the shape-dependent window
bookkeeping (padding to whole windows, the cyclic shift, the mask between regions a shifted window joins, and
the way back) stays in small functions torch.fx keeps opaque, while the projections are calls of the
``nn.Linear`` layers and both attention products are plain matmuls, which lowbit quantizes like any other.
:func:`rebuild_window_attention` puts it in place of every ``ShiftedWindowAttention`` (Swin) and
``ShiftedWindowAttentionV2`` (Swin V2, cosine attention with a learned temperature).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import fx, nn

SHIFT_MASK = -100.0  # what a shifted window adds between tokens of different regions (torchvision's value)


def _padded(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """``x`` (batch, height, width, channels) padded with zeros at the bottom and right to whole windows."""
    height, width = x.shape[1], x.shape[2]
    return F.pad(x, (0, 0, 0, (-width) % window[1], 0, (-height) % window[0]))


def _shift(x: torch.Tensor, window: tuple[int, int], shift: tuple[int, int]) -> tuple[int, int]:
    """The shift that applies to padded map ``x``: none along a side that one window already covers."""
    height, width = x.shape[1], x.shape[2]
    return (0 if window[0] >= height else shift[0]), (0 if window[1] >= width else shift[1])


def to_windows(x: torch.Tensor, window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """The tokens of ``x`` (batch, height, width, channels), padded and cyclically shifted, grouped by window:
    (batch x windows, tokens per window, channels)."""
    padded = _padded(x, window)
    dh, dw = _shift(padded, window, shift)
    if dh or dw:
        padded = torch.roll(padded, shifts=(-dh, -dw), dims=(1, 2))
    b, h, w, c = padded.shape
    grid = padded.view(b, h // window[0], window[0], w // window[1], window[1], c)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def from_windows(windows: torch.Tensor, x: torch.Tensor, window: tuple[int, int],
                 shift: tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`to_windows` for windows computed from ``x``: back to ``x``'s layout and size."""
    b, height, width, _ = x.shape
    h, w = height + (-height) % window[0], width + (-width) % window[1]
    c = windows.shape[-1]
    grid = windows.view(b, h // window[0], w // window[1], window[0], window[1], c)
    padded = grid.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
    dh, dw = _shift(padded, window, shift)
    if dh or dw:
        padded = torch.roll(padded, shifts=(dh, dw), dims=(1, 2))
    return padded[:, :height, :width, :].contiguous()


def _region_mask(x: torch.Tensor, window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor | None:
    """Per window, what its attention adds between tokens that came from different regions of the unshifted
    map (the cyclic shift joins them in the last windows of each side); None when nothing is shifted."""
    padded = _padded(x[..., :1], window)
    dh, dw = _shift(padded, window, shift)
    if not (dh or dw):
        return None
    _, h, w, _ = padded.shape
    region = torch.zeros(1, h, w, 1, device=x.device)
    label = 0
    for rows in (slice(0, h - window[0]), slice(h - window[0], h - dh), slice(h - dh, h)):
        for cols in (slice(0, w - window[1]), slice(w - window[1], w - dw), slice(w - dw, w)):
            region[:, rows, cols, :] = label
            label += 1
    ids = to_windows(region, window, (0, 0)).squeeze(-1)  # already padded, and labelled where it lies unshifted
    different = ids.unsqueeze(1) != ids.unsqueeze(2)
    return different.to(x.dtype) * SHIFT_MASK  # (windows, tokens, tokens)


def window_probabilities(scores: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, window: tuple[int, int],
                         shift: tuple[int, int], logit_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The softmax of ``scores`` (batch x windows, heads, tokens, tokens), computed from ``x``'s windows: scaled
    by ``1 / sqrt(head width)`` (the head width is ``x``'s channels over the heads), or for V2's cosine
    attention by ``exp(logit_scale)`` capped at 100, plus ``bias`` (1, heads, tokens, tokens) and, for shifted
    windows, the mask between regions."""
    heads, tokens = scores.shape[1], scores.shape[-1]
    if logit_scale is None:
        scores = scores * (x.shape[-1] // heads) ** -0.5
    else:
        scores = scores * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    scores = scores + bias
    mask = _region_mask(x, window, shift)
    if mask is not None:
        windows = mask.shape[0]
        scores = (scores.view(-1, windows, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)).view_as(scores)
    return torch.softmax(scores, dim=-1)


def table_bias(table: torch.Tensor, index: torch.Tensor, tokens: int) -> torch.Tensor:
    """Each head's relative position bias, (1, heads, tokens, tokens), from V1's learned table."""
    return table[index].view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)


# shape-dependent Python (padding, shifts, slices): torch.fx records each call as one opaque function call
fx.wrap("to_windows")
fx.wrap("from_windows")
fx.wrap("window_probabilities")
fx.wrap("table_bias")


class WindowAttention(nn.Module):
    """torchvision's ``ShiftedWindowAttention`` or ``ShiftedWindowAttentionV2``: the same weights and function,
    projections as layers. V2's position bias, a small network of constant coordinates, is computed once here
    and kept as a buffer; its keys' bias, which V2 zeroes at every call, is zeroed in the copy of ``qkv``."""

    def __init__(self, source: nn.Module, cosine: bool) -> None:
        super().__init__()
        self.window = (int(source.window_size[0]), int(source.window_size[1]))
        self.shift = (int(source.shift_size[0]), int(source.shift_size[1]))
        self.heads = int(source.num_heads)
        self.qkv, self.proj = source.qkv, source.proj
        self.attention_dropout, self.dropout = float(source.attention_dropout), float(source.dropout)
        self.logit_scale: nn.Parameter | None = None
        if cosine:
            self.logit_scale = source.logit_scale
            self.qkv = copy.deepcopy(source.qkv)
            if self.qkv.bias is not None:
                with torch.no_grad():
                    third = self.qkv.bias.numel() // 3
                    self.qkv.bias[third:2 * third].zero_()
            with torch.no_grad():
                self.register_buffer("position_bias", source.get_relative_position_bias().detach().clone())
        else:
            self.relative_position_bias_table = source.relative_position_bias_table
            self.register_buffer("relative_position_index", source.relative_position_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windows = to_windows(x, self.window, self.shift)
        b, n, c = windows.shape
        qkv = self.qkv(windows).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.logit_scale is None:
            bias = table_bias(self.relative_position_bias_table, self.relative_position_index, n)
        else:
            q, k, bias = F.normalize(q, dim=-1), F.normalize(k, dim=-1), self.position_bias
        scores = torch.matmul(q, k.transpose(-2, -1))
        probabilities = window_probabilities(scores, x, bias, self.window, self.shift, self.logit_scale)
        probabilities = F.dropout(probabilities, self.attention_dropout, self.training)
        mixed = torch.matmul(probabilities, v).transpose(1, 2).reshape(b, n, c)
        out = F.dropout(self.proj(mixed), self.dropout, self.training)
        return from_windows(out, x, self.window, self.shift)


def rebuild_window_attention(model: nn.Module) -> int:
    """Replace, in place, every torchvision ``ShiftedWindowAttention`` and ``ShiftedWindowAttentionV2`` of
    ``model`` by a :class:`WindowAttention` with the same weights. Returns how many were replaced."""
    try:
        from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
    except ImportError:  # pragma: no cover - torchvision is a dependency; a model without it has none
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (ShiftedWindowAttention, ShiftedWindowAttentionV2):
                rebuilt = WindowAttention(child, cosine=type(child) is ShiftedWindowAttentionV2)
                setattr(parent, name, rebuilt.train(child.training))
                replaced += 1
    return replaced
