"""Quantization-aware fine-tuning of a quantized codec on its own rate-distortion loss.

Learned rounding fits one layer (or block) at a time to the float codec's outputs; at 4 bits the error is spread
over every large layer, and no layer's rounding can make up for another's. Training the whole quantized codec
end to end on the loss it was trained with (``lambda * 255^2 * MSE + bpp``), weights through their quantizers
(straight-through) and step sizes learned (LSQ), lets the layers compensate each other and the entropy model
follow the quantized latents. The photos are their own targets: no labels and no float model are needed.

Some training photos are held out (never cropped for training) to choose the model kept among the checkpoints
of the run; the starting model is one of them, so fine-tuning never returns a codec worse on those photos than
the one it was given. The evaluation photos play no part.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lowbit import qmath
from lowbit.codec.exact import ExactPath, parameter_networks
from lowbit.codec.gdn import QGDN
from lowbit.codec.latent_grid import first_layers
from lowbit.codec.task import finish, is_codec
from lowbit.codec.train import random_crops, rate_distortion_loss
from lowbit.errors import LowbitError
from lowbit.qat.loop import cosine_factor, scale_groups
from lowbit.qat.trainable import copy_quantized, grid_activation_quantizers, refreeze, unfreeze, weight_quantizers

# GDN's norm, sqrt(beta + gamma @ x^2), needs gamma >= 0 and beta > 0; CompressAI's GDN keeps them there by a
# reparametrization with this lower bound on beta, which the quantized layer (plain gamma and beta) replaces by a
# projection after every step.
BETA_MIN = 1e-6
# How fast lambda follows the rate under ``hold_rate``: its logarithm moves by this times the relative rate excess.
RATE_GAIN = 0.5


def next_lambda(lmbda: float, bpp: float, target_bpp: float) -> float:
    """Lambda for the next step when the codec just spent ``bpp`` where the starting model spends ``target_bpp``.

    A codec trained on its own loss keeps training and slides along its rate-distortion curve (to more bits when
    it was not trained to convergence), which changes its rate point without moving the curve. Lowering lambda
    when the rate runs above the start's, raising it when below (a multiplicative dual step on the rate
    constraint), holds the rate, so what fine-tuning recovers appears as quality at the starting rate."""
    return lmbda * math.exp(-RATE_GAIN * (bpp - target_bpp) / max(target_bpp, 1e-6))


@dataclass(frozen=True)
class CodecFinetuneOptions:
    """One fine-tuning run: ``steps`` batches of ``batch_size`` random ``crop`` crops, Adam at ``lr`` for the
    weights and ``scale_lr`` (relative to each step size) for the grids, both decaying on one cosine;
    ``lmbda`` is the codec's rate-distortion trade-off (the one it was trained with); gradients are clipped to
    ``clip_norm`` as in training (0: no clipping). ``hold_rate`` keeps the starting model's rate: lambda is
    then adjusted after every step (:func:`next_lambda`) so that the codec spends on each batch the bits the
    starting model spends, and what training gains shows as quality at that rate. ``val_photos`` photos
    are held out to choose the checkpoint kept, scored every ``eval_every`` steps on ``val_crops`` crops."""

    lmbda: float
    steps: int = 300
    # 2e-4: on the two training photos the hyperprior's W4A8 fine-tuning holds out, holding the rate after QDrop,
    # BD-rate against FP32 went from +3.9% at 1e-4 to +1.4% in the same 300 steps (600 steps at 1e-4: -0.7%)
    lr: float = 2e-4
    scale_lr: float = 1e-3
    aux_lr: float = 1e-3
    clip_norm: float = 1.0
    batch_size: int = 8
    crop: int = 128
    val_photos: int = 2
    val_crops: int = 16
    eval_every: int = 100
    seed: int = 0
    hold_rate: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.lmbda, (int, float)) and math.isfinite(self.lmbda) and self.lmbda > 0):
            raise LowbitError(f"lambda must be a positive number, got {self.lmbda}; give the codec's own "
                              "(its recipe's lmbda)")
        for name in ("lr", "scale_lr", "aux_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise LowbitError(f"{name} must be a positive number, got {value}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm >= 0):
            raise LowbitError(f"clip_norm must be 0 or more, got {self.clip_norm}")
        for name in ("steps", "batch_size", "val_photos", "val_crops", "eval_every"):
            if getattr(self, name) < 1:
                raise LowbitError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.crop < 16:
            raise LowbitError(f"crop must be at least 16 pixels, got {self.crop}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_photos(photos: list[torch.Tensor], count: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(training, held_out)``: ``count`` photos drawn with ``seed`` are held out, the rest train."""
    if len(photos) <= count:
        raise LowbitError(f"fine-tuning a codec needs more than {count} photos ({count} are held out to choose the "
                          f"model kept), got {len(photos)}; pass a folder with more photos")
    held = set(random.Random(seed).sample(range(len(photos)), count))
    return ([p for i, p in enumerate(photos) if i not in held], [p for i, p in enumerate(photos) if i in held])


@torch.no_grad()
def held_out_score(model: nn.Module, crops: torch.Tensor, lmbda: float, batch_size: int) -> dict[str, float]:
    """Rate-distortion loss, PSNR and estimated bpp of ``model`` (eval mode) on ``crops``."""
    model.eval()
    total = {"loss": 0.0, "mse": 0.0, "bpp": 0.0}
    for start in range(0, len(crops), batch_size):
        batch = crops[start:start + batch_size]
        loss, mse, bpp = rate_distortion_loss(model(batch), batch, lmbda)
        for key, value in (("loss", loss), ("mse", mse), ("bpp", bpp)):
            total[key] += float(value) * len(batch)
    n = len(crops)
    return {"loss": total["loss"] / n, "psnr": -10 * math.log10(max(total["mse"] / n, 1e-10)), "bpp": total["bpp"] / n}


def float_path_copy(qmodel: nn.Module) -> nn.Module:
    """A copy of ``qmodel`` whose entropy-parameter networks run in floating point: the exact integer path
    computes without gradients and needs inputs on its grids, which training's uniform noise does not give
    (:func:`finish` puts it back)."""
    model = copy_quantized(qmodel)
    for _, network in parameter_networks(model):
        for key in [k for k, hook in network._forward_hooks.items() if isinstance(hook, ExactPath)]:
            del network._forward_hooks[key]
    return model


def _trainable(qmodel: nn.Module) -> tuple[nn.Module, list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """A trainable copy of ``qmodel`` and its parameter groups: weights and biases, step sizes, and the entropy
    bottlenecks' quantiles (fitted by CompressAI's auxiliary loss, as in training)."""
    model = float_path_copy(qmodel)
    unfreeze(model)
    for p in model.parameters():
        p.requires_grad_(True)
    # the synthesis networks' latent inputs keep their grids: those hold the decoded latents exactly
    latent_inputs = {id(layer.input_quant) for _, layer in first_layers(model)}
    scales = [q.learn_scale() for q in weight_quantizers(model)]
    scales += [q.learn_scale() for _, q in grid_activation_quantizers(model) if id(q) not in latent_inputs]
    skip = {id(p) for p in scales}
    named = [(n, p) for n, p in model.named_parameters() if id(p) not in skip]
    aux = [p for n, p in named if n.endswith(".quantiles")]
    main = [p for n, p in named if not n.endswith(".quantiles")]
    return model, main, scales, aux


@torch.no_grad()
def project(model: nn.Module, scales: list[nn.Parameter]) -> None:
    """Back into the valid set after a step: positive step sizes, GDN's gamma non-negative and beta above
    :data:`BETA_MIN` (a negative norm would give NaN)."""
    for p in scales:
        p.clamp_(min=qmath.MIN_SCALE)
    for m in model.modules():
        if isinstance(m, QGDN):
            m.weight.clamp_(min=0.0)
            m.bias.clamp_(min=BETA_MIN)


def finetune_codec(qmodel: nn.Module, photos: list[torch.Tensor], options: CodecFinetuneOptions,
                   progress: bool = False) -> nn.Module:
    """A fine-tuned copy of quantized codec ``qmodel`` (same widths, frozen again, entropy tables rebuilt) trained
    on crops of ``photos`` (uint8 ``(3, H, W)`` tensors); ``qmodel`` is left unchanged. The run (options,
    held-out history, the step kept) is recorded in ``lowbit_info.extra["finetune"]``, which ``lowbit.save``
    stores as provenance."""
    if getattr(qmodel, "lowbit_info", None) is None or not is_codec(qmodel):
        raise LowbitError("codec fine-tuning needs a quantized codec (from lowbit codec quantize or lowbit.load)")
    train_photos, held_photos = split_photos(photos, options.val_photos, options.seed)
    held_crops = random_crops(held_photos, options.crop, options.val_crops, random.Random(options.seed + 1))
    torch.manual_seed(options.seed)
    model, main, scales, aux = _trainable(qmodel)
    if not scales:
        raise LowbitError("this codec has no integer grids to fine-tune (FP16 or dynamic ranges only); quantize "
                          "it to integer weights first")
    optimizer = torch.optim.Adam([{"params": main, "lr": options.lr, "base_lr": options.lr}])
    scale_optimizer = torch.optim.Adam(scale_groups(scales, options.scale_lr))
    aux_optimizer = torch.optim.Adam(aux, lr=options.aux_lr) if aux else None
    history = [{"step": 0, **held_out_score(model, held_crops, options.lmbda, options.batch_size),
                "lmbda": options.lmbda, "seconds": 0.0}]
    best_loss, best_step, best_state = history[0]["loss"], 0, None
    # the starting model, in training mode so that its rate is estimated as the student's is
    reference = float_path_copy(qmodel).requires_grad_(False).train() if options.hold_rate else None
    lmbda, generator, start = options.lmbda, random.Random(options.seed), time.perf_counter()
    for step in tqdm(range(1, options.steps + 1), disable=not progress, desc="fine-tuning"):
        factor = cosine_factor(step - 1, options.steps)
        for group in optimizer.param_groups + scale_optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        model.train()
        batch = random_crops(train_photos, options.crop, options.batch_size, generator)  # in [0, 1]
        if reference is not None:  # the same uniform noise in place of rounding: the random state is replayed
            with torch.no_grad(), torch.random.fork_rng(devices=[batch.device] if batch.is_cuda else []):
                target_bpp = float(rate_distortion_loss(reference(batch), batch, lmbda)[2])
        loss, _, bpp = rate_distortion_loss(model(batch), batch, lmbda)
        if not torch.isfinite(loss):
            raise LowbitError(f"the loss became {loss.item()} at step {step}; lower --lr (now {options.lr})")
        optimizer.zero_grad(set_to_none=True)
        scale_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if options.clip_norm > 0:
            nn.utils.clip_grad_norm_(main, options.clip_norm)
        optimizer.step()
        scale_optimizer.step()
        project(model, scales)
        if reference is not None:
            lmbda = next_lambda(lmbda, float(bpp.detach()), target_bpp)
        if aux_optimizer is not None:
            aux_optimizer.zero_grad(set_to_none=True)
            model.aux_loss().backward()
            aux_optimizer.step()
        if step % options.eval_every == 0 or step == options.steps:
            score = held_out_score(model, held_crops, options.lmbda, options.batch_size)
            history.append({"step": step, **score, "lmbda": lmbda, "seconds": round(time.perf_counter() - start, 1)})
            if score["loss"] < best_loss:
                best_loss, best_step = score["loss"], step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is None:
        model = copy_quantized(qmodel)
    else:
        model.load_state_dict(best_state)
        model.eval()
        refreeze(model)
    finish(model)
    model.lowbit_info.extra["finetune"] = {"options": options.to_dict(), "history": history, "kept_step": best_step,
                                           "train_photos": len(train_photos), "held_out_photos": len(held_photos),
                                           "objective": "rate_distortion"}
    return model
