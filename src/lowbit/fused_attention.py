"""Fused attention written out in the traced graph, so that its probabilities are quantized.

``F.scaled_dot_product_attention`` computes the queries-times-keys product, the softmax and the
probabilities-times-values product in one call (timm's vision transformers call it in every block). lowbit
quantizes the inputs and the output of a call, so the probabilities inside it stayed float, and an integer
runtime ran their product with the values in float. :func:`write_out_fused_attention` replaces each such call
in a traced graph by the same computation in three steps, ``queries @ keys^T``, the scaled softmax
(:func:`attention_probabilities`), and ``probabilities @ values``: the probabilities then feed a matmul like
any other value and get an activation quantizer (0 to their calibrated maximum), and both products run on
integer kernels. Masks and causal masking are applied as the fused call applies them, also where they are
arguments of the model's ``forward`` (timm's blocks pass their optional ``attn_mask`` and ``is_causal`` on);
calls with dropout or grouped-query heads keep the fused call.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

PARAMETERS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
DEFAULTS: dict[str, Any] = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                            "enable_gqa": False}


def attention_probabilities(scores: torch.Tensor, query: torch.Tensor, scale: float | None,
                            mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """The softmax over the keys of the scaled scores, masked as ``scaled_dot_product_attention`` masks them: a
    boolean ``mask`` keeps the positions it marks True, a float one is added, ``causal`` keeps the lower
    triangle; ``scale=None`` is ``1 / sqrt(head width)``."""
    factor = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = scores * factor
    if causal:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=-1)


def _writable(arguments: dict[str, Any]) -> bool:
    """Whether a call can be written out: no dropout, no grouped heads, a constant scale (the mask and the causal
    flag may be values the model receives, as timm's blocks receive them)."""
    constant = isinstance(arguments["scale"], (int, float, type(None))) and not any(
        isinstance(arguments[k], fx.Node) for k in ("dropout_p", "enable_gqa"))
    return constant and arguments["dropout_p"] == 0 and not arguments["enable_gqa"]


def write_out_fused_attention(gm: fx.GraphModule) -> int:
    """Replace, in place, every ``scaled_dot_product_attention`` call of ``gm``'s graph without dropout or
    grouped heads by its three steps; returns how many were replaced."""
    graph = gm.graph
    replaced = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not F.scaled_dot_product_attention:
            continue
        arguments = {**DEFAULTS, **dict(zip(PARAMETERS, node.args)), **node.kwargs}
        if not _writable(arguments):
            continue
        query, key, value = arguments["query"], arguments["key"], arguments["value"]
        with graph.inserting_before(node):
            keys_t = graph.call_method("transpose", (key, -2, -1))
            scores = graph.call_function(torch.matmul, (query, keys_t))
            probabilities = graph.call_function(attention_probabilities, (scores, query, arguments["scale"],
                                                                          arguments["attn_mask"],
                                                                          arguments["is_causal"]))
            mixed = graph.call_function(torch.matmul, (probabilities, value))
        node.replace_all_uses_with(mixed)
        graph.erase_node(node)
        replaced += 1
    if replaced:
        graph.lint()
        gm.recompile()
    return replaced
