"""``hessian`` sensitivity: the loss increase predicted by a label-free Hessian (HAWQ-v2 and EPTQ's objective).

To second order, quantizing a tensor ``t`` to ``t + d`` raises the loss by ``1/2 d^T H d`` (the first-order
term vanishes for a trained network). ``H`` is the Gauss-Newton Hessian of the softmax cross-entropy, which
needs no labels (see :mod:`lowbit.algorithms.hessian`): a probe ``u`` with covariance ``diag(p) - p p^T`` gives
``g = J^T u`` with ``E[g g^T] = H``, so ``E[(g . d)^2] = d^T H d``. Probes are drawn independently per image,
so over a batch the cross-image terms vanish in expectation and one backward pass per probe scores every
weight tensor and every activation, at every candidate width, at once.

The quadratic form is estimated whole, cross terms included. HAWQ-v2's ``trace(H) |d|^2`` (or the diagonal
``sum_j H_jj d_j^2``) assumes rounding errors are independent of each other; at 2 bits, where the searched range
clips the largest weights of a channel together, that under-counts the damage several times over and sends
fragile layers to 2 bits.
"""

from __future__ import annotations

import torch

from lowbit.algorithms.hessian import softmax_hessian_probe
from lowbit.device import model_device
from lowbit.hooks import watching_outputs
from lowbit.mixed.sensitivity import Scores, ScoringTask, float_mode, metric


@metric("hessian")
def hessian_scores(task: ScoringTask, n_probes: int = 16, chunk: int = 16) -> Scores:
    """Predicted loss increase (per image) of quantizing each layer's weights and each activation alone.

    Small chunks average more independent probe products, which lowers the variance of the estimate.
    """
    copies, images, layers, weight_bits = task.copies, task.images, task.layers, task.weight_bits
    acts, act_bits = task.activations, task.activation_bits
    gen = torch.Generator().manual_seed(task.seed)
    base = copies[max(copies)]
    device = model_device(base)
    modules = dict(base.named_modules())
    params = [modules[name].weight for name in layers]
    with torch.no_grad():
        weight_errors = [{b: copies[b].get_submodule(name).weight_quant.fake_quantize(w.detach()) - w.detach()
                          for b in weight_bits} for name, w in zip(layers, params)]
    weight_sums: list[dict[int, torch.Tensor | float]] = [{b: 0.0 for b in weight_bits} for _ in layers]
    act_sums: dict[str, dict[int, torch.Tensor | float]] = {name: {b: 0.0 for b in act_bits} for name in acts}
    act_quantizers = {b: {name: copies[b].get_submodule(name) for name in acts} for b in act_bits}
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str, out: torch.Tensor) -> torch.Tensor:
        # keep the quantizer's output and hand the network a copy: an in-place operation further on
        # (``x.mul_(3)``) would otherwise change the captured values and the tensor the gradient is taken for
        captured[name] = out
        return out.clone()

    with watching_outputs(((n, modules[n]) for n in acts), capture), float_mode(base):
        for start in range(0, len(images), chunk):
            captured.clear()
            x = images[start : start + chunk].to(device).requires_grad_(True)
            logits = base(x)
            names = [n for n in acts if n in captured and captured[n].requires_grad]
            tensors = [captured[n] for n in names]
            with torch.no_grad():
                act_errors = [{b: act_quantizers[b][n].fake_quantize(t.detach()) - t.detach() for b in act_bits}
                              for n, t in zip(names, tensors)]
            for _ in range(n_probes):
                u = softmax_hessian_probe(logits, gen)
                grads = torch.autograd.grad((logits * u).sum(), params + tensors, retain_graph=True,
                                            allow_unused=True)
                with torch.no_grad():
                    for sums, errors, g in zip(weight_sums + [act_sums[n] for n in names],
                                               weight_errors + act_errors, grads):
                        if g is not None:
                            for b, d in errors.items():
                                sums[b] += (g * d).sum().double().square()  # a tensor: no device sync
    per_image = 0.5 / (n_probes * len(images))

    def scores(sums: dict[int, torch.Tensor | float]) -> dict[int, float]:
        return {b: float(s) * per_image for b, s in sums.items()}

    return Scores({name: scores(sums) for name, sums in zip(layers, weight_sums)},
                  {name: scores(sums) for name, sums in act_sums.items()})
