"""Data-free calibration images generated from a trained network (DGH, arXiv 2410.22110).

The images are optimized so that (1) the mean and standard deviation of every batch-norm layer's input, taken
over the *whole* generated set, match the running statistics the network stored during training
(:mod:`lowbit.data.bn_statistics`), and (2) the network's output is decisive: the output loss rewards a large
gap between an image's target logit and its smallest logit, so images carry class evidence rather than only
matching moments (target classes are spread evenly over the set, see :func:`output_loss`).
Each step optimizes one batch through the image pipeline (random crop, flip, smoothing, clipping to the range
real inputs take, :mod:`lowbit.data.image_pipeline`); the learning rate halves whenever a pass over all batches
stops improving the loss. Generation runs on the model's device, batched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn
from tqdm import tqdm

from lowbit.data.bn_statistics import LayerWeighting, SetStatistics
from lowbit.data.image_pipeline import ImagePipeline
from lowbit.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from lowbit.device import model_device
from lowbit.errors import LowbitError
from lowbit.model_mode import evaluating

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthOptions:
    """Options of :func:`synthesize` (recorded with the generated images).

    The output loss is off by default: it drives images to be far more confident than real ones, and on the
    bundled Fashion-MNIST networks every weight of it tried made W4A8 calibration worse (see
    docs/benchmarks/datafree.md). The default number of steps per image is the smallest that reached
    real-data accuracy there.
    """

    iters: int = 80  # optimization steps per image (each step updates one batch)
    batch_size: int = 128
    lr: float = 0.25
    output_loss_factor: float = 0.0
    extra_pixels: int | None = None  # default: input size / 7, as 32 pixels for 224 x 224
    flip: bool = True
    smoothing_size: int | None = None  # default: 3 from 64 x 64 inputs up, off below (it would blur away detail)
    smoothing_sigma: float = 1.25
    layer_weighting: LayerWeighting = "average"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iters < 1 or self.batch_size < 1:
            raise LowbitError(f"iters and batch_size must be positive, got {self.iters} and {self.batch_size}")
        if self.lr <= 0 or self.output_loss_factor < 0:
            raise LowbitError("lr must be positive and output_loss_factor non-negative")
        if self.layer_weighting not in ("average", "first"):
            raise LowbitError(f"layer_weighting must be 'average' or 'first', got {self.layer_weighting!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def output_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative mean gap between each image's target output and its smallest output.

    DGH widens the gap between the largest and the smallest output. Left free, the largest output is the same
    easy class for almost every image (on the Fashion-MNIST ResNet-20, 253 of 256 images became "bag"), so each
    image is given a target class instead, spread evenly over the set, and the target's gap is widened.
    """
    flat = logits.reshape(logits.shape[0], -1)
    return -(flat.gather(1, targets.view(-1, 1)).squeeze(1) - flat.min(dim=1).values).mean()


def valid_range(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel bounds of normalized inputs whose pixels lie in [0, 1]."""
    m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    if (s <= 0).any():
        raise LowbitError(f"std must be positive, got {tuple(std)}")
    return (0 - m) / s, (1 - m) / s


def noise_images(n_images: int, input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 seed: int = 0) -> torch.Tensor:
    """Gaussian noise clipped to the valid input range: the baseline synthetic images are measured against."""
    low, high = valid_range(mean, std)
    noise = torch.randn((n_images, *input_shape), generator=torch.Generator().manual_seed(seed))
    return noise.clamp(low.view(1, -1, 1, 1), high.view(1, -1, 1, 1))


def synthesize(model: nn.Module, n_images: int = 1024, input_shape: Sequence[int] = (3, 224, 224),
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               options: SynthOptions | None = None, progress: bool = False, **kwargs) -> torch.Tensor:
    """Generate ``n_images`` calibration inputs of ``input_shape`` (C, H, W) for ``model``, returned on the CPU
    in the model's normalized input space (pixels in [0, 1] normalized by ``mean`` and ``std``).

    ``mean``/``std`` describe the normalization the model expects (one value per channel, or one for all), so
    generated pixels stay inside the range real inputs can take. Keywords are :class:`SynthOptions` fields.
    """
    options = options or SynthOptions(**kwargs)
    c, h, w = _check_shape(input_shape)
    mean, std = _per_channel(mean, c, "mean"), _per_channel(std, c, "std")
    if n_images < 1:
        raise LowbitError(f"n_images must be at least 1, got {n_images}")
    low, high = valid_range(mean, std)
    extra = options.extra_pixels if options.extra_pixels is not None else max(1, round(min(h, w) / 7))
    smoothing = options.smoothing_size if options.smoothing_size is not None else (3 if min(h, w) >= 64 else 1)
    pipeline = ImagePipeline((h, w), extra, low, high, options.flip, smoothing, options.smoothing_sigma)
    device = model_device(model)
    gen = torch.Generator().manual_seed(options.seed)
    with evaluating(model):
        grad_flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        sizes = [min(options.batch_size, n_images - i) for i in range(0, n_images, options.batch_size)]
        init_size = (c, *pipeline.input_size)
        batches = [pipeline.clip(torch.randn((n, *init_size), generator=gen)).to(device).requires_grad_(True)
                   for n in sizes]
        targets = [torch.arange(start, start + n, device=device)
                   for start, n in zip(range(0, n_images, options.batch_size), sizes)]
        optimizer = torch.optim.Adam(batches, lr=options.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
        stats = SetStatistics(model, len(batches), options.layer_weighting)
        start = time.perf_counter()
        try:
            bar = tqdm(range(options.iters), desc="synthesizing", disable=not progress, leave=False)
            for _ in bar:
                summed = torch.zeros((), device=device)  # kept where it is computed: one sync per pass, not per step
                for b in torch.randperm(len(batches), generator=gen).tolist():
                    optimizer.zero_grad(set_to_none=True)
                    logits = model(pipeline.augment(batches[b], gen))
                    loss = stats.loss(b)
                    if options.output_loss_factor > 0:
                        classes = torch.remainder(targets[b], logits.reshape(len(logits), -1).shape[1])
                        loss = loss + options.output_loss_factor * output_loss(logits, classes)
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        batches[b].copy_(pipeline.clip(batches[b]))
                    summed += loss.detach() / len(batches)
                pass_loss = float(summed)
                scheduler.step(pass_loss)
                log.debug("pass loss %.5f, lr %.3g", pass_loss, optimizer.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{pass_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        finally:
            stats.remove()
            for p, flag in zip(model.parameters(), grad_flags):
                p.requires_grad_(flag)
    log.info("synthesized %d images in %.1f s", n_images, time.perf_counter() - start)
    with torch.no_grad():
        return torch.cat([pipeline.finalize(b.detach()) for b in batches]).cpu()


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise LowbitError(f"input_shape must be (channels, height, width), got {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _per_channel(values: Sequence[float] | float, channels: int, what: str) -> tuple[float, ...]:
    values = (values,) if isinstance(values, (int, float)) else tuple(values)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise LowbitError(f"{what} has {len(values)} values but the input has {channels} channels")
    return tuple(float(v) for v in values)
