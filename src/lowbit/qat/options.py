"""``FinetuneOptions``: the hyper-parameters of quantization-aware fine-tuning, checked at construction.

Every field is plain JSON (numbers, text, booleans, ``None``) so that the options of a run are stored whole in
the provenance of the file it writes, and a resumed run can compare its options with the checkpoint's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Mapping

from lowbit.errors import LowbitError

Optimizer = Literal["adam", "sgd"]
DistillLoss = Literal["kl", "mse"]
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
DISTILL_LOSSES: tuple[str, ...] = ("kl", "mse")


@dataclass(frozen=True)
class FinetuneOptions:
    """How to fine-tune a quantized model.

    - ``lr``: learning rate of the weights (and biases); ``scale_lr`` the relative one of the step sizes: with
      Adam each step size moves by about ``scale_lr`` times its own value per step, whatever its magnitude
      (weight steps are a thousand times smaller than some activation steps). Both follow one cosine schedule.
    - ``act_range_momentum``: ``None`` learns activation step sizes by gradient (LSQ); a momentum in [0, 1)
      instead tracks each activation range as an exponential moving average of the batch min/max
      (``range = m * range + (1 - m) * batch``), as OMPQ's QAT does.
    - ``data_percentage``: the share of the training images (after the held-out ones are set aside) used.
    - ``val_fraction`` / ``val_images``: how many training images are held out to choose the epoch kept
      (``val_images`` wins when given). Epoch 0, the starting model, is a candidate: fine-tuning never returns
      a model worse on the held-out images than the one it was given.
    - ``distill``: train against the teacher's outputs even when labels exist and no float teacher is given
      (without labels, or with a float teacher, it always does).
    - ``checkpoint_every``: steps between checkpoints; 0 writes one at the end of each epoch.
    """

    epochs: int = 3
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 64
    optimizer: Optimizer = "adam"
    momentum: float = 0.9
    scale_lr: float = 1e-3
    learn_weight_scale: bool = True
    learn_act_scale: bool = True
    act_range_momentum: float | None = None
    data_percentage: float = 1.0
    val_fraction: float = 0.1
    val_images: int | None = None
    distill: bool = False
    distill_loss: DistillLoss = "kl"
    temperature: float = 1.0
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("checkpoint_every", self.checkpoint_every, 0)
        _positive("lr", self.lr)
        _positive("scale_lr", self.scale_lr)
        _positive("temperature", self.temperature)
        _in_range("weight_decay", self.weight_decay, 0.0, math.inf, "0 or more")
        _in_range("momentum", self.momentum, 0.0, 1.0, "in [0, 1)", upper_open=True)
        if self.act_range_momentum is not None:
            _in_range("act_range_momentum", self.act_range_momentum, 0.0, 1.0, "in [0, 1) (e.g. 0.99)",
                      upper_open=True)
        if not (_finite(self.data_percentage) and 0.0 < self.data_percentage <= 1.0):
            raise LowbitError(f"data_percentage must be in (0, 1], got {self.data_percentage!r}; "
                              "e.g. 0.1 uses a tenth of the training images")
        if not (_finite(self.val_fraction) and 0.0 < self.val_fraction < 1.0):
            raise LowbitError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}; e.g. 0.1 holds out "
                              "a tenth of the training images to choose the epoch kept")
        if self.val_images is not None:
            _at_least("val_images", self.val_images, 1)
        if self.optimizer not in OPTIMIZERS:
            raise LowbitError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.distill_loss not in DISTILL_LOSSES:
            raise LowbitError(f"unknown distill_loss {self.distill_loss!r}; choose one of {', '.join(DISTILL_LOSSES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FinetuneOptions":
        """Options from keywords (or a stored record), refusing unknown names with the known ones listed."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LowbitError(f"unknown fine-tuning option {unknown[0]!r}; known options: {', '.join(sorted(known))}")
        return cls(**d)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise LowbitError(f"{name} must be an integer of at least {low}, got {value!r}")


def _positive(name: str, value: Any) -> None:
    if not (_finite(value) and value > 0):
        raise LowbitError(f"{name} must be a positive finite number, got {value!r}; e.g. {name}=1e-4")


def _in_range(name: str, value: Any, low: float, high: float, what: str, upper_open: bool = False) -> None:
    if not _finite(value) or value < low or value > high or (upper_open and value >= high):
        raise LowbitError(f"{name} must be {what}, got {value!r}")
