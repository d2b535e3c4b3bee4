"""``hessian`` sensitivity: the loss increase predicted by a label-free Hessian (HAWQ-v2 and EPTQ's objective).

To second order, quantizing a tensor ``t`` by ``t + d`` raises the loss by ``1/2 sum_j H_jj d_j^2`` (the
first-order term vanishes for a trained network and cross terms are dropped). ``H`` is the Gauss-Newton Hessian
of the softmax cross-entropy, which needs no labels (see :mod:`lowbit.algorithms.hessian`). One probe ``u``
with covariance ``diag(p) - p p^T`` gives ``g = J^T u``, and ``E[g_j^2] = H_jj``: one backward pass yields the
Hessian diagonal of every weight and every activation at once. Weighting each element by its own diagonal
(rather than HAWQ-v2's average trace) keeps outlier channels from being under-counted.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.algorithms.hessian import softmax_hessian_probe
from lowbit.calibrate import model_device
from lowbit.mixed.sensitivity import Scores, float_mode


def hessian_scores(copies: dict[int, nn.Module], images: torch.Tensor, layers: list[str],
                   weight_bits: tuple[int, ...], acts: list[str], act_bits: tuple[int, ...], seed: int = 0,
                   n_probes: int = 16, chunk: int = 64) -> Scores:
    """Predicted loss increase (per image) of quantizing each layer's weights and each activation alone."""
    gen = torch.Generator().manual_seed(seed)
    base = copies[max(copies)]
    device = model_device(base)
    modules = dict(base.named_modules())
    params = [modules[name].weight for name in layers]
    weight_diag = [torch.zeros_like(p) for p in params]
    act_scores: dict[str, dict[int, float]] = {name: {b: 0.0 for b in act_bits} for name in acts}
    act_quantizers = {b: {name: dict(copies[b].named_modules())[name] for name in acts} for b in act_bits}
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str, out: torch.Tensor) -> torch.Tensor:
        # keep the quantizer's output and hand the network a copy: an in-place operation further on
        # (``x.mul_(3)``) would otherwise change the captured values and the tensor the gradient is taken for
        captured[name] = out
        return out.clone()

    hooks = [modules[name].register_forward_hook(lambda m, i, out, n=name: capture(n, out)) for name in acts]
    try:
        with float_mode(base):
            for start in range(0, len(images), chunk):
                captured.clear()
                x = images[start : start + chunk].to(device).requires_grad_(True)
                logits = base(x)
                names = [n for n in acts if n in captured and captured[n].requires_grad]
                tensors = [captured[n] for n in names]
                act_diag = [torch.zeros_like(t) for t in tensors]
                for _ in range(n_probes):
                    u = softmax_hessian_probe(logits, gen)
                    grads = torch.autograd.grad((logits * u).sum(), params + tensors, retain_graph=True,
                                                allow_unused=True)
                    for acc, g in zip(weight_diag + act_diag, grads):
                        if g is not None:
                            acc += g.detach().pow(2)
                with torch.no_grad():
                    for name, t, diag in zip(names, tensors, act_diag):
                        for b in act_bits:
                            noise = (act_quantizers[b][name].apply(t.detach()) - t.detach()).pow(2)
                            act_scores[name][b] += 0.5 * float((diag / n_probes * noise).sum())
    finally:
        for h in hooks:
            h.remove()
    n = len(images)
    weights: dict[str, dict[int, float]] = {}
    with torch.no_grad():
        for name, w, diag in zip(layers, params, weight_diag):
            weights[name] = {}
            for b in weight_bits:
                wq = dict(copies[b].named_modules())[name].weight_quant
                noise = (wq.apply(w.detach()) - w.detach()).pow(2)
                weights[name][b] = 0.5 * float((diag / n_probes * noise).sum()) / n
    return Scores(weights, {name: {b: s / n for b, s in table.items()} for name, table in act_scores.items()})
