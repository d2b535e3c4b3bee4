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

from lowbit.errors import LowbitError


def softmax_hessian_probe(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random vector ``A eps`` with covariance equal to the softmax cross-entropy Hessian."""
    p = logits.detach().float().softmax(dim=-1)
    eps = torch.randn(p.shape, generator=gen).to(p.device)
    root = p.sqrt()
    return root * eps - p * (root * eps).sum(dim=-1, keepdim=True)


def _probe_diagonals(logits: torch.Tensor, acts: list[torch.Tensor], n_probes: int,
                     gen: torch.Generator) -> list[torch.Tensor]:
    """Hessian diagonal estimates of ``acts`` (all upstream of ``logits``), reduced to shape (N, dim1)."""
    sums = [torch.zeros(a.shape[:2], device=a.device) for a in acts]
    wrt = [k for k, a in enumerate(acts) if a.requires_grad]  # an output cut off from the graph stays zero
    for _ in range(n_probes):
        u = softmax_hessian_probe(logits, gen)
        grads = torch.autograd.grad((logits * u).sum(), [acts[k] for k in wrt], retain_graph=True,
                                    allow_unused=True)
        for k, g in zip(wrt, grads):
            if g is not None:
                g2 = g.detach().pow(2)
                sums[k] += g2.mean(dim=tuple(range(2, g2.dim()))) if g2.dim() > 2 else g2
    return [s / n_probes for s in sums]


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
        # (N, C) per block is small; on the model's device it weights each step's loss without a copy
        for k, d in enumerate(_probe_diagonals(acts[-1], acts, n_probes, gen)):
            results[k].append(d)
    return [torch.cat(r) for r in results]


def module_output_hessian_diagonals(model: nn.Module, modules: list[nn.Module], inputs: torch.Tensor,
                                    n_probes: int = 16, chunk: int = 64,
                                    seed: int = 0) -> list[list[list[torch.Tensor]]]:
    """Hessian diagonal estimates, shaped (n, dim1), of the output of every call to each of ``modules``
    while ``model`` (whose output is the logits) runs on ``inputs``, indexed ``[module][chunk][call]``.

    The same estimator as :func:`activation_hessian_diagonals` for models that cannot be cut into a chain of
    stages (no fx graph): forward hooks collect the outputs, which may come from any number of calls.
    """
    gen = torch.Generator().manual_seed(seed)
    results: list[list[list[torch.Tensor]]] = [[] for _ in modules]
    device = next(model.parameters()).device
    for i in range(0, len(inputs), chunk):
        outs: list[list[torch.Tensor]] = [[] for _ in modules]

        def keep(k: int):
            def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
                # a copy goes on downstream, so an in-place operation there cannot change what is differentiated
                out = output.clone()
                outs[k].append(out)
                return out
            return hook

        handles = [m.register_forward_hook(keep(k)) for k, m in enumerate(modules)]
        try:
            with torch.enable_grad():
                logits = model(inputs[i : i + chunk].to(device))
        finally:
            for h in handles:
                h.remove()
        if not isinstance(logits, torch.Tensor):
            raise LowbitError(f"the label-free Hessian needs a model that returns logits as one tensor, "
                              f"not {type(logits).__name__}")
        flat = [o for calls in outs for o in calls]
        diagonals = iter(_probe_diagonals(logits, flat, n_probes, gen) if flat else [])
        for k, calls in enumerate(outs):
            results[k].append([next(diagonals) for _ in calls])
    return results
