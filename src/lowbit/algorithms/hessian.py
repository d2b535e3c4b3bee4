"""Label-free Hessian of the task loss with respect to intermediate activations (as in EPTQ).

For a classifier with logits ``z`` and softmax ``p``, the Hessian of the cross-entropy with respect to ``z`` is
``diag(p) - p p^T`` whatever the label, so the Gauss-Newton Hessian with respect to an activation ``a``,
``J^T (diag(p) - p p^T) J``, needs no labels. Writing ``diag(p) - p p^T = A A^T`` with
``A eps = sqrt(p) * eps - p * <sqrt(p), eps>``, Hutchinson's estimator gives its diagonal as the mean over
Gaussian probes ``eps`` of ``(J^T A eps)^2``: one vector-Jacobian product per probe for all activations at once.
"""

from __future__ import annotations

import torch
from torch import nn


def softmax_hessian_probe(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random vector ``A eps`` with covariance equal to the softmax cross-entropy Hessian."""
    p = logits.detach().float().softmax(dim=-1)
    eps = torch.randn(p.shape, generator=gen).to(p.device)
    root = p.sqrt()
    return root * eps - p * (root * eps).sum(dim=-1, keepdim=True)


def activation_hessian_diagonals(stages: list[nn.Module], inputs: torch.Tensor, n_probes: int = 16,
                                 chunk: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """Hessian diagonal estimates for the output of every stage of a chain ``stages[-1](...stages[0](x))``,
    reduced to shape (N, dim1) (per sample and channel, or per token for sequences)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(p for s in stages for p in s.parameters()).device
    results: list[list[torch.Tensor]] = [[] for _ in stages]
    for i in range(0, len(inputs), chunk):
        acts, a = [], inputs[i : i + chunk].to(device)
        for stage in stages:
            a = stage(a)
            acts.append(a)
        sums = [torch.zeros(a.shape[:2], device=device) for a in acts]
        for _ in range(n_probes):
            u = softmax_hessian_probe(acts[-1], gen)
            grads = torch.autograd.grad((acts[-1] * u).sum(), acts, retain_graph=True, allow_unused=True)
            for k, g in enumerate(grads):
                if g is not None:
                    g2 = g.detach().pow(2)
                    sums[k] += g2.mean(dim=tuple(range(2, g2.dim()))) if g2.dim() > 2 else g2
        for k, s in enumerate(sums):
            # (N, C) per block is small; on the model's device it weights each step's loss without a copy
            results[k].append(s / n_probes)
    return [torch.cat(r) for r in results]
