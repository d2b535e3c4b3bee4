"""Batch-norm input statistics of generated images, aggregated over the whole generated set.

Matching BN statistics batch by batch (as DeepInversion and ZeroQ do) makes every batch mimic the full
training distribution, so each batch ends up covering every mode at once and the images within a batch look
alike. DGH matches the statistics of the *whole* generated set instead: when a batch is optimized, its own
statistics (with gradients) are combined with the most recent statistics of every other batch (constants), and
the combined mean and variance are compared with the BN layer's running statistics.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lowbit.errors import LowbitError

LayerWeighting = Literal["average", "first"]
FIRST_LAYER_MULTIPLIER = 10.0


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """BN layers with running statistics (timm's BatchNormAct included), in registration order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None]


class SetStatistics:
    """Per-batch (mean, second moment) of every BN layer's input, and the loss on their set-wide aggregate."""

    def __init__(self, model: nn.Module, n_batches: int, weighting: LayerWeighting = "average") -> None:
        self.layers = batchnorm_layers(model)
        if not self.layers:
            raise LowbitError(
                f"{type(model).__name__} has no batch-norm layers, so its training statistics are not stored in it "
                "and synthetic images cannot be generated (ViT and MLP-Mixer use LayerNorm); calibrate with real "
                "images, or with --calib-data noise")
        n = len(self.layers)
        self.weights = [1.0 / n] * n if weighting == "average" else [FIRST_LAYER_MULTIPLIER] + [1.0] * (n - 1)
        self.means: list[list[torch.Tensor | None]] = [[None] * n for _ in range(n_batches)]
        self.moments: list[list[torch.Tensor | None]] = [[None] * n for _ in range(n_batches)]
        self.counts = [[0] * n for _ in range(n_batches)]
        self._current: list[tuple[torch.Tensor, torch.Tensor, int] | None] = [None] * n
        self._hooks = [m.register_forward_pre_hook(self._hook(i)) for i, (_, m) in enumerate(self.layers)]

    def _hook(self, index: int):
        def capture(module: nn.Module, args: tuple) -> None:
            x = args[0]
            dims = [0] + list(range(2, x.dim()))
            count = x.numel() // x.shape[1]
            self._current[index] = (x.mean(dim=dims), x.pow(2).mean(dim=dims), count)
        return capture

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()

    def loss(self, batch: int) -> torch.Tensor:
        """Weighted squared distance between set-wide and running statistics, after a forward of ``batch``;
        stores the batch's statistics (detached) for the other batches' steps."""
        total = torch.zeros(())
        for i, (_, bn) in enumerate(self.layers):
            if self._current[i] is None:
                continue
            mean, moment, count = self._current[i]
            sum_mean, sum_moment, total_count = mean * count, moment * count, count
            for b in range(len(self.means)):
                if b != batch and self.means[b][i] is not None:
                    sum_mean = sum_mean + self.means[b][i] * self.counts[b][i]
                    sum_moment = sum_moment + self.moments[b][i] * self.counts[b][i]
                    total_count += self.counts[b][i]
            set_mean = sum_mean / total_count
            set_std = (sum_moment / total_count - set_mean.pow(2)).clamp_min(0).add(bn.eps).sqrt()
            target_std = (bn.running_var + bn.eps).sqrt()
            layer_loss = ((set_mean - bn.running_mean).pow(2).sum() / mean.numel()
                          + (set_std - target_std).pow(2).sum() / mean.numel())
            total = total.to(layer_loss.device) + self.weights[i] * layer_loss
            self.means[batch][i], self.moments[batch][i] = mean.detach(), moment.detach()
            self.counts[batch][i] = count
            self._current[i] = None
        return total
