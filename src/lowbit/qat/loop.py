"""The training loop behind ``lowbit.finetune`` (:mod:`lowbit.qat.finetune`).

The model is made trainable (:mod:`lowbit.qat.trainable`), trained through its quantizers with straight-through
rounding, evaluated after every epoch on images held out from the training data, and the best epoch (the
starting model included) is frozen again. Cross-entropy is the loss when the data has labels; without labels,
or with ``distill=True``, the model learns to reproduce a float teacher's outputs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from lowbit import qmath
from lowbit.errors import LowbitError
from lowbit.qat.data import TrainingData
from lowbit.qat.losses import agreement, objective
from lowbit.qat.options import FinetuneOptions
from lowbit.qat.trainable import (RangeTracker, copy_quantized, grid_activation_quantizers, refreeze, train_mode,
                                  unfreeze, weight_quantizers)

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Where a run stands: what a checkpoint records and a resumed run continues from."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed within the epoch under way
    global_step: int = 0
    loss_sum: float = 0.0  # training loss summed over the epoch under way
    loss_count: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "RunState":
        try:
            state = cls(**d)
            ints = (state.epoch, state.step, state.global_step, state.loss_count, state.best_epoch)
            if not all(isinstance(v, int) and v >= 0 for v in ints) or not isinstance(state.history, list):
                raise TypeError("counters must be non-negative integers")
        except TypeError as exc:
            raise LowbitError(f"{where} has a damaged fine-tuning record ({exc}); start again without resume") from None
        return state


def cosine_factor(step: int, total: int) -> float:
    """Learning-rate multiplier after ``step`` of ``total`` steps: one cosine from 1 down to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def _parameter_groups(model: nn.Module, scales: list[nn.Parameter], options: FinetuneOptions) -> list[dict]:
    """Weights with decay; biases and norm parameters without (decaying them only shifts activations)."""
    skip = {id(p) for p in scales}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": options.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return [dict(g, lr=options.lr, base_lr=options.lr) for g in groups if g["params"]]


def scale_groups(scales: list[nn.Parameter], scale_lr: float) -> list[dict]:
    """One group per step size, its rate relative to its own magnitude: Adam moves every parameter by about
    its learning rate per step, and step sizes range over orders of magnitude across layers."""
    groups = []
    for p in scales:
        lr = scale_lr * float(p.detach().abs().mean().clamp_min(1e-12))
        groups.append({"params": [p], "lr": lr, "base_lr": lr, "weight_decay": 0.0})
    return groups


def _weight_optimizer(groups: list[dict], options: FinetuneOptions) -> torch.optim.Optimizer:
    if options.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=options.lr, momentum=options.momentum)
    return torch.optim.AdamW(groups, lr=options.lr, betas=(options.momentum, 0.999))


class Trainer:
    """One fine-tuning run over a trainable copy of a quantized model."""

    def __init__(self, model: nn.Module, teacher: nn.Module | None, data: TrainingData, options: FinetuneOptions,
                 device: torch.device) -> None:
        self.model, self.teacher, self.data, self.options, self.device = model, teacher, data, options, device
        unfreeze(model)
        for p in model.parameters():
            p.requires_grad_(True)
        train_mode(model)  # fixes batch-norm parameters before the groups are built
        scales = [q.learn_scale() for q in weight_quantizers(model)] if options.learn_weight_scale else []
        if options.act_range_momentum is None and options.learn_act_scale:
            scales += [q.learn_scale() for _, q in grid_activation_quantizers(model)]
        self.scales = scales
        self.optimizers = {"weights": _weight_optimizer(_parameter_groups(model, scales, options), options)}
        if scales:
            self.optimizers["scales"] = torch.optim.Adam(scale_groups(scales, options.scale_lr))
        self.state = RunState()
        self.best: dict[str, torch.Tensor] | None = None
        self.steps_per_epoch = data.steps_per_epoch(options.batch_size)
        self.total_steps = options.epochs * self.steps_per_epoch
        # writes a checkpoint of this run (set by lowbit.finetune when asked for one)
        self.save_checkpoint: Callable[[], None] | None = None
        self.summary: dict[str, Any] = {}

    @property
    def lr(self) -> float:
        return self.options.lr * cosine_factor(self.state.global_step, self.total_steps)

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _teacher_out(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        with torch.no_grad():
            return self.teacher(x).float()

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None) -> float:
        x = x.to(self.device)
        y = y.to(self.device) if y is not None else None
        loss = objective(self.model(x).float(), y, self._teacher_out(x), self.options)
        if not torch.isfinite(loss):
            raise LowbitError(f"fine-tuning diverged (the loss is {loss.item()}) at epoch {self.state.epoch + 1}, "
                              f"step {self.state.step + 1}; lower the learning rate (now {self.options.lr:g})")
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        factor = cosine_factor(self.state.global_step, self.total_steps)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
            opt.step()
        with torch.no_grad():  # a step size that reached zero would divide by zero in the next forward pass
            for p in self.scales:
                p.clamp_(min=qmath.MIN_SCALE)
        self.state.step += 1
        self.state.global_step += 1
        self.state.loss_sum += loss.item() * len(x)
        self.state.loss_count += len(x)
        return loss.item()

    def frozen_copy(self) -> nn.Module:
        """The model as fine-tuning would return it now: codes and biases on their grids, in eval mode."""
        model = copy_quantized(self.model)
        refreeze(model)
        return model.eval()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and top-1 of :meth:`frozen_copy` on the held-out images (top-1 against the teacher's choice when
        there are no labels), so the epoch kept is scored exactly as it is returned."""
        model = self.frozen_copy()
        total, loss_sum, hits = 0, 0.0, 0
        for x, y in self.data.held_out_batches(256):
            x, y = x.to(self.device), y.to(self.device) if y is not None else None
            out, t = model(x).float(), self._teacher_out(x)
            loss_sum += objective(out, y, t, self.options).item() * len(x)
            hits += agreement(out, y if y is not None else t)
            total += len(x)
        loss = loss_sum / max(total, 1)
        if not math.isfinite(loss):
            raise LowbitError(f"the model gives NaN or infinite outputs on the held-out images; lower the learning "
                              f"rate (now {self.options.lr:g}), or, if training has not started, check the model "
                              "and the scale of the inputs")
        return {"held_out_loss": loss, "held_out_top1": hits / max(total, 1)}

    def score(self, metrics: dict[str, float]) -> list[float]:
        """Larger is better: held-out top-1 with labels (loss breaks ties), else the distillation loss."""
        if self.data.labelled:
            return [metrics["held_out_top1"], -metrics["held_out_loss"]]
        return [-metrics["held_out_loss"], metrics["held_out_top1"]]

    def consider(self, epoch: int, metrics: dict[str, float]) -> None:
        """Keep the model of ``epoch`` if it is the best so far on the held-out images (earlier wins ties)."""
        score = self.score(metrics)
        if self.state.best_score is None or score > self.state.best_score:
            self.state.best_epoch, self.state.best_score = epoch, score
            self.best = self.snapshot()

    def run_epoch(self, epoch: int, progress: bool) -> None:
        batches = self.data.epoch_batches(epoch, self.options.batch_size, self.options.seed, skip=self.state.step)
        bar = tqdm(batches, total=self.steps_per_epoch - self.state.step, disable=not progress, leave=False,
                   desc=f"epoch {epoch + 1}/{self.options.epochs}")
        for x, y in bar:
            loss = self.train_step(x, y)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            every = self.options.checkpoint_every
            if self.save_checkpoint is not None and every and self.state.global_step % every == 0:
                self.save_checkpoint()

    def fit(self, progress: bool = False) -> None:
        """Train the remaining epochs, then load the best epoch's model and freeze it."""
        tracker = None
        if self.options.act_range_momentum is not None:
            tracker = RangeTracker(self.options.act_range_momentum).attach(grid_activation_quantizers(self.model))
        try:
            if self.state.best_score is None:
                start = time.perf_counter()
                metrics = self.evaluate()
                self._record(0, None, metrics, time.perf_counter() - start)
            for epoch in range(self.state.epoch, self.options.epochs):
                start = time.perf_counter()
                lr = self.lr
                self.run_epoch(epoch, progress)
                train_loss = self.state.loss_sum / max(self.state.loss_count, 1)
                metrics = self.evaluate()
                self.state.epoch, self.state.step, self.state.loss_sum, self.state.loss_count = epoch + 1, 0, 0.0, 0
                self._record(epoch + 1, train_loss, metrics, time.perf_counter() - start, lr)
                if self.save_checkpoint is not None:
                    self.save_checkpoint()
        finally:
            if tracker is not None:
                tracker.detach()
        if self.best is not None:
            self.model.load_state_dict(self.best)
        refreeze(self.model)
        self.model.eval()

    def _record(self, epoch: int, train_loss: float | None, metrics: dict[str, float], seconds: float,
                lr: float | None = None) -> None:
        row = {"epoch": epoch, "train_loss": train_loss, **metrics, "lr": lr, "seconds": round(seconds, 3)}
        self.state.history.append(row)
        self.consider(epoch, metrics)
        log.info("epoch %d: train loss %s, held-out top-1 %.4f, held-out loss %.4f", epoch,
                 "-" if train_loss is None else f"{train_loss:.4f}", metrics["held_out_top1"], metrics["held_out_loss"])

    def record(self) -> dict[str, Any]:
        """What the saved file keeps of this run (plain JSON): options, per-epoch history, the epoch kept."""
        return {**self.summary, "options": self.options.to_dict(), "history": self.state.history,
                "kept_epoch": self.state.best_epoch, "train_images": len(self.data.train),
                "held_out_images": len(self.data.held_out),
                "held_out_metric": "top1" if self.data.labelled else "distillation loss",
                "objective": f"distill_{self.options.distill_loss}" if self.teacher is not None else "cross_entropy"}
