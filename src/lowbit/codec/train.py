"""Training a codec from scratch on random crops of photographs (rate-distortion loss, Adam).

The loss follows CompressAI's ``RateDistortionLoss``: ``lambda * 255^2 * MSE + bpp``, where bpp is the
estimated rate of the latents under the entropy model's likelihoods. ``lambda`` alone picks the rate point,
so one recipe trains every quality. The entropy bottleneck's quantiles (the range its tables will cover) are
fitted by their own auxiliary loss and optimizer, which never touch the transforms.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lowbit.codec.compressai_modules import compressai_module
from lowbit.codec.images import pad_to_stride
from lowbit.errors import LowbitError


@dataclass(frozen=True)
class CodecTrainOptions:
    """One training recipe. The learning rate decays from ``lr`` to ``final_lr`` on a cosine."""

    lmbda: float = 0.0035
    steps: int = 2000
    crop: int = 128
    batch_size: int = 8
    lr: float = 5e-4
    final_lr: float = 1e-5
    aux_lr: float = 1e-3
    clip_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.lmbda > 0:
            raise LowbitError(f"lambda must be positive, got {self.lmbda}; e.g. 0.0018 (low rate) to 0.0483 (high)")
        for name in ("steps", "crop", "batch_size"):
            if getattr(self, name) < 1:
                raise LowbitError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.final_lr >= 0 and self.aux_lr > 0):
            raise LowbitError("learning rates must be positive (final_lr may be 0)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CodecTrainOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def rate_distortion_loss(output: dict, target: torch.Tensor, lmbda: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """``(loss, mse, bpp)`` of a codec's ``forward`` output: CompressAI's own rate-distortion loss,
    ``lmbda * 255^2 * MSE + bpp``, with MSE on [0, 1] pixels and bpp per pixel of ``target``."""
    RateDistortionLoss = compressai_module("losses").RateDistortionLoss  # here: the CLI reads this module at start

    out = RateDistortionLoss(lmbda=lmbda)(output, target)
    return out["loss"], out["mse_loss"], out["bpp_loss"]


def check_crop(crop: int, stride: int) -> None:
    """A one-line error unless ``crop`` is a multiple of the codec's ``stride``: a crop of another size does not
    go through its down-sampling and back (CompressAI's models fail on it)."""
    if crop % stride:
        raise LowbitError(f"--crop {crop} is not a multiple of the codec's stride {stride}; give --crop "
                          f"{stride * max(1, round(crop / stride))}")


def random_crops(images: list[torch.Tensor], size: int, count: int, generator: random.Random) -> torch.Tensor:
    """``count`` random ``size x size`` crops (random horizontal flips) from uint8 ``(3, H, W)`` images.

    Images are drawn in proportion to their area, so that every region of the set is equally likely;
    images smaller than a crop are edge-padded first.
    """
    areas = [img.shape[-2] * img.shape[-1] for img in images]
    crops = []
    for img in generator.choices(images, weights=areas, k=count):
        if img.shape[-2] < size or img.shape[-1] < size:
            img = pad_to_stride(img[None].float(), size)[0].to(torch.uint8)
        top = generator.randrange(img.shape[-2] - size + 1)
        left = generator.randrange(img.shape[-1] - size + 1)
        patch = img[:, top:top + size, left:left + size]
        crops.append(patch.flip(-1) if generator.random() < 0.5 else patch)
    return torch.stack(crops).float().div_(255)


def _parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The transforms' parameters and the entropy bottlenecks' quantiles (fitted by the auxiliary loss)."""
    main, aux = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (aux if name.endswith(".quantiles") else main).append(param)
    return main, aux


def train_codec(model: nn.Module, images: list[torch.Tensor], options: CodecTrainOptions,
                quiet: bool = False) -> dict[str, float]:
    """Train ``model`` in place on crops of ``images`` (uint8 ``(3, H, W)``); returns the last steps' averages.

    The averages (loss, PSNR of the forward pass, estimated bpp) cover the final 10% of steps, a less noisy
    figure than the last batch.
    """
    if not images:
        raise LowbitError("no training images; give a folder of photos")
    torch.manual_seed(options.seed)
    generator = random.Random(options.seed)
    main, aux = _parameter_groups(model)
    optimizer = torch.optim.Adam(main, lr=options.lr)
    # cosine from lr at the first step to final_lr at the last
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, options.steps - 1), options.final_lr)
    aux_optimizer = torch.optim.Adam(aux, lr=options.aux_lr) if aux else None
    tail = max(1, options.steps // 10)
    sums = {"loss": 0.0, "mse": 0.0, "bpp": 0.0}
    model.train()
    bar = tqdm(range(options.steps), disable=quiet, desc=f"lambda {options.lmbda}")
    for step in bar:
        batch = random_crops(images, options.crop, options.batch_size, generator)
        loss, mse, bpp = rate_distortion_loss(model(batch), batch, options.lmbda)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if options.clip_norm > 0:
            nn.utils.clip_grad_norm_(main, options.clip_norm)
        optimizer.step()
        schedule.step()
        if aux_optimizer is not None:
            aux_optimizer.zero_grad(set_to_none=True)
            model.aux_loss().backward()
            aux_optimizer.step()
        if step >= options.steps - tail:
            for key, value in (("loss", loss), ("mse", mse), ("bpp", bpp)):
                sums[key] += value.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", bpp=f"{bpp.item():.3f}",
                            psnr=f"{-10 * math.log10(max(mse.item(), 1e-10)):.2f}")
    model.eval()
    model.update(force=True)  # the entropy coder's tables follow the trained quantiles
    mse = sums["mse"] / tail
    return {"loss": sums["loss"] / tail, "train_psnr": -10 * math.log10(max(mse, 1e-10)),
            "train_bpp": sums["bpp"] / tail}
