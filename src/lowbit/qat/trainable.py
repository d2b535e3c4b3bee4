"""Turning a frozen quantized model into a trainable one and back.

A frozen model holds integer codes; fine-tuning needs float weights that move by small steps between grid
points, so :func:`unfreeze` starts them at the dequantized codes (their nearest rounding gives back the same
codes) and the quantizers fake-quantize them with a straight-through estimator. Step sizes become parameters
(LSQ) or, for activations, follow a moving average of the observed ranges (:class:`RangeTracker`).
:func:`refreeze` turns the learned step sizes back into buffers and stores integer codes again, which is what
makes a fine-tuned model save and reload bit-exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit import qmath
from lowbit.calibrate import freeze
from lowbit.graph import activation_quantizers
from lowbit.layers import quant_layers
from lowbit.quantizer import Quantizer

BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def copy_quantized(model: nn.Module) -> nn.Module:
    """A deep copy that keeps what lowbit attaches to the model itself.

    ``GraphModule`` rebuilds itself when copied and drops attributes and forward hooks set on it: the run record
    (``lowbit_info``) and the hooks that keep a half-precision model's interface dtype.
    """
    clone = copy.deepcopy(model)
    for attr in ("lowbit_info", "lowbit_record", "lowbit_arch"):
        if attr in model.__dict__ and attr not in clone.__dict__:
            setattr(clone, attr, copy.deepcopy(model.__dict__[attr]))
    for hooks in ("_forward_pre_hooks", "_forward_hooks"):
        if getattr(model, hooks) and not getattr(clone, hooks):
            getattr(clone, hooks).update(getattr(model, hooks))
    return clone


def unfreeze(model: nn.Module) -> None:
    """Make every frozen weight layer of ``model`` trainable again (float weight = its dequantized codes)."""
    for _, layer in quant_layers(model):
        layer.unfreeze()


def refreeze(model: nn.Module) -> None:
    """Step sizes back to (positive) buffers, then integer codes stored again: as :func:`lowbit.quantize` leaves
    a model, so that it saves and reloads bit-exactly."""
    for module in model.modules():
        if isinstance(module, Quantizer):
            module.fix_scale()
    freeze(model)


def learnable_grid(q: Quantizer) -> bool:
    """Whether ``q`` has a static integer grid in use (fp16 casts and per-batch ranges have nothing to learn)."""
    return q.needs_calibration and q.state == "quantize"


def weight_quantizers(model: nn.Module) -> list[Quantizer]:
    return [layer.weight_quant for _, layer in quant_layers(model) if learnable_grid(layer.weight_quant)]


def grid_activation_quantizers(model: nn.Module) -> list[tuple[str, Quantizer]]:
    return [(name, q) for name, q in activation_quantizers(model) if learnable_grid(q)]


def train_mode(model: nn.Module) -> None:
    """Training mode with batch-norm fixed (OMPQ's ``--fix_BN``).

    In fx mode batch-norm is folded into the weights already; in module-swap mode the layers stay, and their
    running statistics and affine parameters must not move: the quantized weights were calibrated against them,
    and small fine-tuning batches would only add noise to statistics estimated on the whole training set.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, BATCHNORM):
            m.eval()
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)


def float_teacher(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every quantizer switched off: the reference outputs for distillation.

    For a model loaded from a ``.lowbit`` file this is the best float model available: its weights are the
    dequantized codes (the float weights are not stored), and activations are no longer quantized.
    """
    teacher = copy_quantized(model).eval()
    for m in teacher.modules():
        if isinstance(m, Quantizer):
            m.set_state("off")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def grid_range(q: Quantizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The real interval a quantizer's grid covers (what its range was chosen as)."""
    qmin, qmax = q.qrange
    scale = q.scale.detach().float()
    if q.spec.symmetric:
        amax = scale * (qmax - qmin) / 2
        return -amax, amax
    zp = q.zero_point.float()
    return (qmin - zp) * scale, (qmax - zp) * scale


def _batch_range(q: Quantizer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().float()
    if q.scale.numel() == 1:
        return x.min().reshape(1), x.max().reshape(1)
    rows = x.transpose(0, q.spec.channel_axis(x.dim())).reshape(x.shape[q.spec.axis], -1)
    return rows.amin(1), rows.amax(1)


@dataclass
class RangeTracker:
    """Activation ranges as exponential moving averages of the batch min/max (HAWQ's and OMPQ's QAT).

    Each quantizer's range starts at its calibrated grid; every training batch moves it to
    ``momentum * range + (1 - momentum) * batch range`` before quantizing, and the grid is recomputed from it.
    Held-out evaluation (eval mode) leaves the ranges alone.
    """

    momentum: float
    ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    handles: list = field(default_factory=list)

    def attach(self, quantizers: list[tuple[str, Quantizer]]) -> "RangeTracker":
        for name, q in quantizers:
            self.ranges[name] = grid_range(q)
            self.handles.append(q.register_forward_pre_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def update(q: Quantizer, args: tuple) -> None:
            if q.training and q.state == "quantize" and args and isinstance(args[0], torch.Tensor):
                self.update(name, q, args[0])
        return update

    @torch.no_grad()
    def update(self, name: str, q: Quantizer, x: torch.Tensor) -> None:
        lo, hi = self.ranges[name]
        batch_lo, batch_hi = _batch_range(q, x)
        m = self.momentum
        lo, hi = m * lo + (1 - m) * batch_lo, m * hi + (1 - m) * batch_hi
        self.ranges[name] = (lo, hi)
        q.set_qparams(*qmath.choose_qparams(lo, hi, int(q.spec.bits), q.spec.symmetric))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
