"""``orthogonality`` sensitivity: OMPQ's layer importance from the orthogonality of layer features.

OMPQ ("Orthogonal Mixed Precision Quantization", arXiv 2109.07865) compares the features of every pair of
layers on one small batch through their Gram matrices: ``ORM(i, j)`` is the centred kernel alignment of the
linear Gram matrices ``X_i X_i^T`` and ``X_j X_j^T`` (``X`` = a layer's outputs, one row per image). A layer
whose features are nearly orthogonal to all others carries information nobody else does, so its importance is
``theta_i = exp(-beta * sum_{j != i} ORM(i, j))``. OMPQ's linear program maximizes ``sum_i b_i * theta~_i``
with ``theta~_i`` the mean importance of layer ``i`` and every layer after it (deeper layers inherit the
errors of earlier ones); here that is the equivalent minimization of ``theta~_i * (b_max - b_i) / b_max``, so
the scores plug into the same exact integer program as the other metrics. No training or labels are needed.
Activations are scored like the layers they feed.
"""

from __future__ import annotations

import torch

from lowbit.device import model_device
from lowbit.hooks import watching_outputs
from lowbit.mixed.sensitivity import Scores, ScoringTask, float_mode, metric

DEFAULT_BETA = 10.0


def centred_gram(features: torch.Tensor) -> torch.Tensor:
    """Centred linear Gram matrix of ``features`` (one row per image), in float64."""
    x = features.reshape(features.shape[0], -1).double()
    gram = x @ x.T
    means = gram.mean(dim=0)
    centred = gram - means[:, None] - means[None, :] + means.mean()
    return centred


def orthogonality_matrix(grams: list[torch.Tensor]) -> torch.Tensor:
    """``ORM(i, j)``: centred kernel alignment of every pair of Gram matrices (1 on the diagonal)."""
    flat = torch.stack([g.reshape(-1) for g in grams])
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return flat @ flat.T


def layer_importance(orm: torch.Tensor, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """``theta~``: importance ``exp(-beta * gamma)``, averaged over each layer and all later ones, scaled to max 1.

    Computed relative to the most important layer so that ``exp`` cannot underflow every entry to zero.
    """
    gamma = orm.sum(dim=1) - orm.diagonal()
    theta = torch.exp(-beta * (gamma - gamma.min()))
    suffix_mean = theta.flip(0).cumsum(0).flip(0) / torch.arange(len(theta), 0, -1, dtype=theta.dtype)
    return suffix_mean / suffix_mean.max()


@metric("orthogonality")
def orthogonality_scores(task: ScoringTask, beta: float = DEFAULT_BETA) -> Scores:
    """Importance-weighted bits lost, ``theta~ * (b_max - b) / b_max``, per layer and per activation.

    The task's ``layer_inputs`` tie each activation to the layers it feeds. Deterministic: the seed is not used.
    """
    images, layers, weight_bits = task.images, task.layers, task.weight_bits
    acts, act_bits, inputs = task.activations, task.activation_bits, task.layer_inputs
    base = task.copies[max(task.copies)]
    modules = dict(base.named_modules())
    grams: dict[str, torch.Tensor] = {}

    def keep_gram(name: str, out: torch.Tensor) -> None:
        if name not in grams:
            grams[name] = centred_gram(out.detach())

    with watching_outputs(((n, modules[n]) for n in layers), keep_gram), torch.no_grad(), float_mode(base):
        base(images.to(model_device(base)))
    seen = [name for name in layers if name in grams]
    importance = dict(zip(seen, layer_importance(orthogonality_matrix([grams[n] for n in seen]), beta).tolist()))
    top_w, top_a = max(weight_bits), max(act_bits) if act_bits else 0
    weights = {name: {b: importance.get(name, 0.0) * (top_w - b) / top_w for b in weight_bits} for name in layers}
    activations: dict[str, dict[int, float]] = {}
    for act in acts:
        fed = [importance.get(l, 0.0) for l, src in inputs.items() if src == act]
        theta = sum(fed) / len(fed) if fed else 0.0
        activations[act] = {b: theta * (top_a - b) / top_a for b in act_bits}
    return Scores(weights, activations)
