"""``QuantConfig``: everything that defines a quantization run, serializable so a run can be reproduced."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from lowbit.errors import LowbitError
from lowbit.spec import (ACTIVATION_OBSERVERS, Bits, ObserverName, QuantSpec, activation_spec, check_bits, default_activation_observer,
                         default_weight_observer, default_weight_symmetry, weight_spec)

CONFIG_VERSION = 1
# Placeholders for "the first/last weight layer", replaced by real names once the model is traced.
FIRST_LAYER = "<first>"
LAST_LAYER = "<last>"
# The role of a weight layer's output that feeds only a residual add (a block's last convolution, its downsample
# shortcut), matched by overrides like a name; see ``QuantConfig.from_bits(residual_bits=...)``.
RESIDUAL_BRANCH = "<residual-branch>"


def _moved(value: Any, default: Callable[[Bits], Any], old: Bits, new: Bits) -> Any:
    """A spec setting taken from width ``old`` to width ``new``: the old width's default becomes the new width's,
    a departure from it (an explicit choice) is kept."""
    return default(new) if value == default(old) else value


@dataclass(frozen=True)
class Override:
    """Specs for the layers whose qualified module name matches ``pattern`` (fnmatch glob, e.g. ``"layer1.*"``).

    ``weights``/``activations`` left as ``None`` keep the default. For activations the pattern is matched
    against the quantizer's own module path (``"act_quant.add_3"``, or ``"conv1.input_quant"`` when modules are
    swapped), the module that produces the activation (``"conv1"``), the graph node's name (``"add_3"``) and
    the weight layers that consume it. ``keep_float`` leaves the matching layers in floating point, and the
    activations matched by name or by consumer unquantized (a codec's synthesis transform, a sensitive head).
    """

    pattern: str
    weights: QuantSpec | None = None
    activations: QuantSpec | None = None
    keep_float: bool = False

    def __post_init__(self) -> None:
        if self.keep_float and (self.weights is not None or self.activations is not None):
            raise LowbitError(f"override {self.pattern!r} keeps layers float and also gives them bits; choose one")

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)

    def to_dict(self) -> dict:
        return {"pattern": self.pattern,
                "weights": self.weights.to_dict() if self.weights else None,
                "activations": self.activations.to_dict() if self.activations else None,
                "keep_float": self.keep_float}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Override":
        return cls(d["pattern"], QuantSpec.from_dict(d["weights"]) if d.get("weights") else None,
                   QuantSpec.from_dict(d["activations"]) if d.get("activations") else None,
                   bool(d.get("keep_float", False)))


@dataclass(frozen=True)
class QuantConfig:
    """A full quantization recipe.

    ``activations=None`` quantizes weights only. ``method`` names a rounding algorithm and
    ``method_options`` holds that algorithm's options (validated by the algorithm itself).
    ``bias_correction`` removes the mean output shift of rounded weights and ``gain_correction`` the shrinkage
    of each output channel's gain that clipped ranges leave (on layers whose ranges the ``output`` observer
    chose); both apply to round-to-nearest (learned rounding already minimizes the output error).
    ``equalize`` rescales channels through ReLU and GDN so that static activation grids fit every channel
    (:mod:`lowbit.algorithms.equalization`); ``None`` lets the task decide (on for codecs).
    ``float_residual_stream`` leaves unquantized the adds whose sums reach only norms and further adds (a
    transformer's residual stream, which every layer reads through a norm's quantized output); traced models.
    """

    weights: QuantSpec = field(default_factory=lambda: weight_spec(8))
    activations: QuantSpec | None = field(default_factory=lambda: activation_spec(8))
    overrides: tuple[Override, ...] = ()
    method: str = "nearest"
    method_options: Mapping[str, Any] = field(default_factory=dict)
    calib_images: int = 1024
    batch_size: int = 64
    seed: int = 0
    bias_correction: bool = True
    gain_correction: bool = True
    equalize: bool | None = None
    float_residual_stream: bool = False
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.calib_images < 1:
            raise LowbitError(f"calib_images must be at least 1, got {self.calib_images}")
        if self.batch_size < 1:
            raise LowbitError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.version > CONFIG_VERSION:
            raise LowbitError(f"config version {self.version} is newer than this lowbit ({CONFIG_VERSION}); upgrade lowbit")
        object.__setattr__(self, "overrides", tuple(self.overrides))
        for spec in (self.activations, *(o.activations for o in self.overrides)):
            if spec is not None and spec.observer not in ACTIVATION_OBSERVERS:
                raise LowbitError(f"activation observer must be one of {', '.join(ACTIVATION_OBSERVERS)}, "
                                  f"got {spec.observer!r}")
        object.__setattr__(self, "method_options", dict(self.method_options))

    @classmethod
    def from_bits(cls, weights_bits: Bits = 8, activation_bits: Bits | None = 8, *,
                  weights_observer: ObserverName | None = None, activation_observer: ObserverName | None = None,
                  symmetric_weights: bool | None = None, per_channel: bool = True, dynamic_activations: bool = False,
                  first_last_bits: Bits | None = None, residual_bits: Bits | None = None,
                  **kwargs: Any) -> "QuantConfig":
        """The keyword form behind ``lowbit.quantize(model, data, weights_bits=4, activation_bits=8)``.

        ``first_last_bits`` adds overrides keeping the first and last weight layers (and their input
        activations) at that width; they are resolved when the model is prepared (see ``FIRST_LAYER``).
        ``residual_bits`` requantizes the outputs of weight layers that feed a residual add at that width
        instead of the activations' (traced models only). Every multiply-accumulate still reads activations at
        the activations' width; only the two branches summed into a block's output are kept wider, as learned
        rounding's papers do by quantizing a block's output once after its add, while an integer runtime
        still sees a requantized value at each point.
        """
        wbits = check_bits(weights_bits, "weights_bits")
        weights = weight_spec(wbits, weights_observer, symmetric_weights, per_channel)
        activations = None
        if activation_bits is not None:
            abits = check_bits(activation_bits, "activation_bits")
            activations = activation_spec(abits, activation_observer, dynamic_activations)
        overrides = tuple(kwargs.pop("overrides", ()))
        if first_last_bits is not None:
            fl = check_bits(first_last_bits, "first_last_bits")
            overrides += tuple(Override(p, weights=weight_spec(fl, weights_observer, symmetric_weights, per_channel),
                                        activations=(replace(activations, bits=fl, observer=activation_observer or default_activation_observer(fl))
                                                     if activations else None))
                               for p in (FIRST_LAYER, LAST_LAYER))
        if residual_bits is not None:
            rb = check_bits(residual_bits, "residual_bits")
            if activations is None:
                raise LowbitError("residual_bits sets the width of activations, which are not quantized here; "
                                  "set activation bits or drop residual_bits")
            overrides += (Override(RESIDUAL_BRANCH, activations=replace(
                activations, bits=rb, observer=activation_observer or default_activation_observer(rb))),)
        return cls(weights=weights, activations=activations, overrides=overrides, **kwargs)

    def weights_at(self, bits: Bits) -> QuantSpec:
        """The default weight spec moved to another width (for mixed precision and overrides).

        Observer and grid symmetry follow the new width where the default spec has its own width's defaults;
        a choice that departs from them (``weights_observer="minmax"``, ``symmetric_weights=False`` at 4 bits) is
        kept at every width.
        """
        bits = check_bits(bits, "weight bits")
        w = self.weights
        return replace(w, bits=bits, observer=_moved(w.observer, default_weight_observer, w.bits, bits),
                       symmetric=_moved(w.symmetric, default_weight_symmetry, w.bits, bits))

    def activations_at(self, bits: Bits) -> QuantSpec | None:
        """The default activation spec moved to another width (None when activations are not quantized); the
        observer follows the width unless the default spec departs from its own width's default."""
        if self.activations is None:
            return None
        bits = check_bits(bits, "activation bits")
        a = self.activations
        return replace(a, bits=bits, observer=_moved(a.observer, default_activation_observer, a.bits, bits))

    def keeps_float(self, name: str) -> bool:
        """True when an override leaves weight layer ``name`` in floating point (the first matching one wins)."""
        for o in self.overrides:
            if o.matches(name) and (o.keep_float or o.weights is not None):
                return o.keep_float
        return False

    def weight_spec_for(self, name: str) -> QuantSpec:
        """Spec of the weights of module ``name`` (the first matching override wins)."""
        for o in self.overrides:
            if o.weights is not None and o.matches(name):
                return o.weights
        return self.weights

    def activation_spec_for(self, *names: str) -> QuantSpec | None:
        """Spec of an activation known under any of ``names`` (producer module, node name, consumers).

        ``None`` means unquantized: activations are off, or the first override that matches keeps them float.
        """
        for o in self.overrides:
            if (o.activations is not None or o.keep_float) and any(o.matches(n) for n in names if n):
                return o.activations
        return self.activations

    def resolve(self, first: str | None, last: str | None) -> "QuantConfig":
        """Replace the first/last-layer placeholders in overrides by the model's real layer names."""
        subst = {FIRST_LAYER: first, LAST_LAYER: last}
        overrides = tuple(replace(o, pattern=subst[o.pattern]) if o.pattern in subst else o
                          for o in self.overrides if o.pattern not in subst or subst[o.pattern])
        return replace(self, overrides=overrides)

    def to_dict(self) -> dict:
        return {"version": self.version, "weights": self.weights.to_dict(),
                "activations": self.activations.to_dict() if self.activations else None,
                "overrides": [o.to_dict() for o in self.overrides], "method": self.method,
                "method_options": dict(self.method_options), "calib_images": self.calib_images,
                "batch_size": self.batch_size, "seed": self.seed, "bias_correction": self.bias_correction,
                "gain_correction": self.gain_correction, "equalize": self.equalize,
                "float_residual_stream": self.float_residual_stream}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantConfig":
        try:
            return cls(weights=QuantSpec.from_dict(d["weights"]),
                       activations=QuantSpec.from_dict(d["activations"]) if d.get("activations") else None,
                       overrides=tuple(Override.from_dict(o) for o in d.get("overrides", ())),
                       method=d.get("method", "nearest"), method_options=d.get("method_options", {}),
                       calib_images=d.get("calib_images", 1024), batch_size=d.get("batch_size", 64),
                       seed=d.get("seed", 0), bias_correction=d.get("bias_correction", True),
                       gain_correction=d.get("gain_correction", False),  # recipes written before it had none
                       equalize=d.get("equalize", False),
                       float_residual_stream=d.get("float_residual_stream", False),
                       version=d.get("version", CONFIG_VERSION))
        except (KeyError, TypeError) as exc:
            raise LowbitError(f"malformed quantization config ({exc}); regenerate it with lowbit") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "QuantConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise LowbitError(f"config is not valid JSON ({exc}); check the file") from None
