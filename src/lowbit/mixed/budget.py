"""``Budget``: what a mixed-precision allocation must fit in, and which bit-widths it may choose from."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from lowbit.errors import LowbitError

MIB = 2**20
SIZE_MEASURES = ("file", "codes")
TARGETS = ("weights_cr", "model_size_mb", "gbops", "total_cr", "activation_cr")
MIN_HOLDOUT_IMAGES = 10


@dataclass(frozen=True)
class Budget:
    """Targets for :func:`lowbit.mixed.allocate` (give at least one of the first five, or ``max_drop``).

    - ``weights_cr``: compression of the quantized layers' weights against float32 (8 means on average a
      little under 4 bits once scales are counted);
    - ``model_size_mb``: size of those weights in MiB (2^20 bytes, the "Mb" of OMPQ and HAWQ tables);
    - ``gbops``: bit operations in units of 10^9, the sum over layers of MACs x weight bits x input bits;
    - ``total_cr``: compression of the total memory, weights plus the largest activation tensor (one
      sample), against float32: EPTQ's target, met by choosing activation widths too (``activation_bits``);
    - ``activation_cr``: compression of that largest activation tensor alone.

    ``size_measure`` says what a size counts. ``"file"`` (the default) is exactly what the saved ``.lowbit``
    file stores: packed codes plus scales and zero points. ``"codes"`` counts weight bits only (parameters x
    bits / 8), the measure of HAWQ/OMPQ tables and of MCT's ``weights_memory``, for like-for-like comparisons;
    the saved file is then larger than the budget by its scales.
    ``bits`` are the weight options; ``activation_bits`` makes the input activations of weight layers mixed
    too (None keeps the config's activation width everywhere, except under ``total_cr`` or ``activation_cr``,
    which then choose activation widths from ``bits``).

    ``max_drop`` asks instead for the smallest weights whose model changes the top-1 class of at most that
    percentage of ``holdout_images`` images set aside from the calibration data, against the float model
    (:mod:`lowbit.mixed.drop_search`). No labels are needed, and the share of changed classes bounds the loss
    of top-1 on those images from above.
    """

    weights_cr: float | None = None
    model_size_mb: float | None = None
    gbops: float | None = None
    bits: tuple[int, ...] = (2, 4, 8)
    activation_bits: tuple[int, ...] | None = None
    size_measure: str = "file"
    total_cr: float | None = None
    activation_cr: float | None = None
    max_drop: float | None = None
    holdout_images: int = 512

    def __post_init__(self) -> None:
        if all(getattr(self, name) is None for name in TARGETS) and self.max_drop is None:
            raise LowbitError("a mixed-precision budget needs a target: weights_cr, model_size_mb, gbops, "
                              "total_cr, activation_cr or max_drop")
        if self.max_drop is not None:
            self._check_accuracy_target()
        for name in TARGETS:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise LowbitError(f"budget {name} must be a positive number, got {value}")
        if self.size_measure not in SIZE_MEASURES:
            raise LowbitError(f"unknown size measure {self.size_measure!r}; choose one of {', '.join(SIZE_MEASURES)}")
        object.__setattr__(self, "bits", _options(self.bits, "bits"))
        if self.activation_bits is None and (self.total_cr is not None or self.activation_cr is not None):
            # a budget on activation memory chooses activation widths, from the weights' options unless told
            object.__setattr__(self, "activation_bits", self.bits)
        if self.activation_bits is not None:
            object.__setattr__(self, "activation_bits", _options(self.activation_bits, "activation_bits"))

    def _check_accuracy_target(self) -> None:
        number = isinstance(self.max_drop, (int, float)) and not isinstance(self.max_drop, bool)
        if not (number and 0 <= self.max_drop < 100):
            raise LowbitError(f"budget max_drop is a percentage of held-out images, from 0 to below 100; got "
                              f"{self.max_drop}")
        others = [name for name in TARGETS if getattr(self, name) is not None]
        if others or self.activation_bits is not None:
            raise LowbitError(f"max_drop chooses the size itself; drop {', '.join(others) or 'activation_bits'} "
                              "from the budget")
        if isinstance(self.holdout_images, bool) or not isinstance(self.holdout_images, int) or \
                self.holdout_images < MIN_HOLDOUT_IMAGES:
            raise LowbitError(f"budget holdout_images must be an integer of at least {MIN_HOLDOUT_IMAGES}, got "
                              f"{self.holdout_images!r}")

    def max_weight_bytes(self, float_bytes: int) -> float | None:
        """The tighter of the compression-ratio and size targets, in bytes (None if neither is set)."""
        limits = []
        if self.weights_cr is not None:
            limits.append(float_bytes / self.weights_cr)
        if self.model_size_mb is not None:
            limits.append(self.model_size_mb * MIB)
        return min(limits) if limits else None

    def max_bops(self) -> float | None:
        return None if self.gbops is None else self.gbops * 1e9

    def max_activation_bytes(self, float_activation_bytes: float) -> float | None:
        return None if self.activation_cr is None else float_activation_bytes / self.activation_cr

    def max_total_bytes(self, float_total_bytes: float) -> float | None:
        return None if self.total_cr is None else float_total_bytes / self.total_cr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Budget":
        acts = d.get("activation_bits")
        return cls(d.get("weights_cr"), d.get("model_size_mb"), d.get("gbops"), tuple(d.get("bits", (2, 4, 8))),
                   tuple(acts) if acts is not None else None, d.get("size_measure", "file"), d.get("total_cr"),
                   d.get("activation_cr"), d.get("max_drop"), d.get("holdout_images", 512))


def _options(values: Any, what: str) -> tuple[int, ...]:
    try:
        options = tuple(sorted({int(v) for v in values}))
    except (TypeError, ValueError):
        raise LowbitError(f"budget {what} must be integers, e.g. (2, 4, 8); got {values!r}") from None
    if not options or any(not 2 <= b <= 16 for b in options):
        raise LowbitError(f"budget {what} must be between 2 and 16 bits, got {values!r}")
    return options
