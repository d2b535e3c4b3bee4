"""Training recipe for the reference models: SGD with Nesterov momentum (AdamW for transformers), one-cycle
cosine schedule, crop + flip.

It exists so anyone can reproduce the bundled checkpoints (``lowbit train resnet20 --dataset fashion-mnist``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lowbit.errors import LowbitError

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters of the reference recipe."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    crop_padding: int = 2
    flip: bool = True
    seed: int = 0
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise LowbitError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")

    def to_dict(self) -> dict:
        return asdict(self)


def augment(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding of the normalized image's border value) and horizontal flip, per sample."""
    n, _, h, w = x.shape
    if padding:
        padded = F.pad(x, (padding,) * 4, value=float(x.amin()))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * padding)
        x = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
        x = x.gather(3, cols)
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def make_optimizer(model: nn.Module, options: TrainOptions) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW (``momentum`` is then its beta1) without weight decay on biases,
    normalization weights and embeddings, the usual setting for vision transformers."""
    if options.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=options.lr, momentum=options.momentum,
                               weight_decay=options.weight_decay, nesterov=True)
    decay = [p for p in model.parameters() if p.dim() >= 2 and p.shape[0] > 1]
    kept = {id(p) for p in decay}
    no_decay = [p for p in model.parameters() if id(p) not in kept]
    groups = [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=options.lr, betas=(options.momentum, 0.999))


def train(model: nn.Module, train_set: Dataset, options: TrainOptions = TrainOptions(),
          device: str | torch.device = "cpu", quiet: bool = False) -> nn.Module:
    """Train ``model`` in place with the reference recipe and return it in eval mode."""
    torch.manual_seed(options.seed)
    gen = torch.Generator().manual_seed(options.seed)
    loader = DataLoader(train_set, batch_size=options.batch_size, shuffle=True, drop_last=True, generator=gen)
    # channels_last is faster for small convolutions on CPU.
    model.to(device, memory_format=torch.channels_last).train()
    opt = make_optimizer(model, options)
    steps = options.epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=options.lr, total_steps=steps, pct_start=0.15,
                                                anneal_strategy="cos", div_factor=10, final_div_factor=100)
    for epoch in range(options.epochs):
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{options.epochs}", disable=quiet, leave=False)
        total, correct = 0, 0
        for x, y in bar:
            x = augment(x, options.crop_padding, options.flip, gen)
            x = x.to(device, memory_format=torch.channels_last if x.dim() == 4 else torch.contiguous_format)
            y = y.to(device)
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=options.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(y)
            correct += int((out.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / total:.3f}")
        log.info("epoch %d: train accuracy %.4f", epoch + 1, correct / max(total, 1))
    return model.to(memory_format=torch.contiguous_format).eval()
