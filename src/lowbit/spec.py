"""What to quantize and how: ``QuantSpec`` (one tensor) and its validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Union

from lowbit.errors import LowbitError

Bits = Union[int, Literal["fp16"]]
Granularity = Literal["per_tensor", "per_channel"]
ObserverName = Literal["minmax", "percentile", "mse", "output"]
OBSERVERS: tuple[str, ...] = ("minmax", "percentile", "mse", "output")
ACTIVATION_OBSERVERS: tuple[str, ...] = ("minmax", "percentile", "mse")  # "output" chooses weight ranges only
MIN_BITS, MAX_BITS = 2, 16


def check_bits(bits: object, what: str = "bits") -> Bits:
    """Validate a bit width (2-16 or "fp16"), accepting numeric strings from the CLI."""
    if isinstance(bits, str) and bits.isascii() and bits.isdigit():
        bits = int(bits)
    if bits == "fp16" or (isinstance(bits, int) and not isinstance(bits, bool) and MIN_BITS <= bits <= MAX_BITS):
        return bits  # type: ignore[return-value]
    raise LowbitError(f"{what} must be an integer from {MIN_BITS} to {MAX_BITS} or 'fp16', got {bits!r}")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor (a layer's weights, or an activation) is quantized.

    ``bits="fp16"`` means a cast to half precision (no grid, no observer). ``dynamic`` activations compute
    their range from every batch at run time instead of from calibration.
    """

    bits: Bits = 8
    symmetric: bool = False
    granularity: Granularity = "per_tensor"
    axis: int = 0
    observer: ObserverName = "minmax"
    dynamic: bool = False
    percentile: float = 99.99

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", check_bits(self.bits))
        if self.granularity not in ("per_tensor", "per_channel"):
            raise LowbitError(f"granularity must be 'per_tensor' or 'per_channel', got {self.granularity!r}")
        if self.observer not in OBSERVERS:
            raise LowbitError(f"observer must be one of {', '.join(OBSERVERS)}, got {self.observer!r}")
        if self.dynamic and self.granularity != "per_tensor":
            raise LowbitError("dynamic quantization is per-tensor only; use granularity='per_tensor'")
        if not 50.0 < self.percentile <= 100.0:
            raise LowbitError(f"percentile must be in (50, 100], got {self.percentile}")

    @property
    def is_fp16(self) -> bool:
        return self.bits == "fp16"

    def channel_axis(self, ndim: int) -> int:
        """The channel axis of an ``ndim``-dimensional tensor (``axis`` may count from the end: a transposed
        convolution's output channels are its weight's axis 1, a linear layer's its axis 0)."""
        return self.axis % ndim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantSpec":
        return cls(**d)


def default_weight_observer(bits: Bits) -> ObserverName:
    """Below 8 bits, the range whose rounded weights change the layer's output least on the calibration
    inputs (``output``; weight MSE when quantizing without data); from 8 bits up, the range with the least
    weight MSE.

    Weights are known before calibration, so a range can be searched for directly, and the search includes the
    full min/max range. At 8 bits the weight error is what matters: min/max ranges leave several times the
    per-layer error of the searched ones on layers with a few large weights (a stem conv, a classifier). With
    16 levels or fewer, which weights get clipped matters as much as how much: the least weight error clips the
    largest weights of short rows (a depthwise 3x3 filter's centre tap), which carry most of the output, and
    loses to plain min/max; weighting each weight's error by the inputs it multiplies does not.
    """
    return "output" if isinstance(bits, int) and bits < 8 else "mse"


def default_activation_observer(bits: Bits) -> ObserverName:
    """MSE range search below 8 bits (where clipping pays), plain min/max from 8 bits up: activations are seen
    only through calibration images, and at 8 bits clipping the largest values they reached there risks more
    than the finer steps gain."""
    return "mse" if isinstance(bits, int) and bits < 8 else "minmax"


def default_weight_symmetry(bits: Bits) -> bool:
    """Signed symmetric weight grids from 4 bits up (what integer kernels use, and no zero points to store);
    affine below 4 bits, where the few levels sit matters more than kernel convenience."""
    return not (isinstance(bits, int) and bits < 4)


def weight_spec(bits: Bits, observer: ObserverName | None = None, symmetric: bool | None = None,
                per_channel: bool = True) -> QuantSpec:
    """Default weight spec: per-channel (output axis), observer and symmetry by width."""
    return QuantSpec(bits=bits, symmetric=default_weight_symmetry(bits) if symmetric is None else symmetric,
                     granularity="per_channel" if per_channel else "per_tensor", axis=0,
                     observer=observer or default_weight_observer(bits))


def activation_spec(bits: Bits, observer: ObserverName | None = None, dynamic: bool = False) -> QuantSpec:
    """Default activation spec: per-tensor, affine, MSE observer below 8 bits (unused when dynamic)."""
    if observer is not None and observer not in ACTIVATION_OBSERVERS:
        raise LowbitError(f"activation observer must be one of {', '.join(ACTIVATION_OBSERVERS)}, got {observer!r}")
    return QuantSpec(bits=bits, symmetric=False, granularity="per_tensor",
                     observer=observer or default_activation_observer(bits), dynamic=dynamic)
