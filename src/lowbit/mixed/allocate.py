"""Mixed precision end to end: score every candidate width, solve the integer program, turn it into overrides."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from lowbit.calibrate import calibrate_activations, calibrate_weights
from lowbit.config import Override, QuantConfig
from lowbit.errors import LowbitError
from lowbit.graph import Mode, prepare
from lowbit.mixed import hessian_sensitivity, orthogonality  # noqa: F401  (register their metrics)
from lowbit.mixed.budget import Budget
from lowbit.mixed.costs import FLOAT_BITS, LayerCost, code_bytes, describe_layers, weight_bytes
from lowbit.mixed.sensitivity import METRICS, Scores, ScoringTask
from lowbit.mixed.solver import Problem, solve

Sensitivity = str  # a registered metric name: hessian, orthogonality, measured (see ``METRICS``)


@dataclass
class LayerChoice:
    """One row of the allocation table."""

    name: str
    params: int
    weight_bits: int
    input_bits: int | None  # None: the input is not quantized
    sensitivity: float  # score of the chosen weight width
    weight_bytes: int
    macs: int
    pinned: bool = False


@dataclass
class Allocation:
    """The chosen widths, with the totals the budget was checked against."""

    budget: Budget
    sensitivity: str
    layers: list[LayerChoice]
    activations: dict[str, int]  # mixed activation quantizer -> bits
    weight_bytes: int
    float_bytes: int
    bops: float
    seconds: dict[str, float] = field(default_factory=dict)
    sensitivity_options: dict[str, Any] = field(default_factory=dict)
    activation_bytes: float = 0.0  # the largest activation tensor (one sample) at its chosen width
    float_activation_bytes: float = 0.0  # the largest activation tensor in float32

    @property
    def compression(self) -> float:
        return self.float_bytes / self.weight_bytes

    @property
    def total_compression(self) -> float:
        """Weights plus the largest activation tensor, against float32 (EPTQ's total-memory measure)."""
        return (self.float_bytes + self.float_activation_bytes) / (self.weight_bytes + self.activation_bytes)

    @property
    def bit_cfg(self) -> list[int]:
        """One weight width per quantized layer, in model order: OMPQ's ``bit_cfg`` (``--bit-cfg`` takes it back)."""
        return [c.weight_bits for c in self.layers]

    def overrides(self, config: QuantConfig) -> tuple[Override, ...]:
        """Per-layer and per-activation overrides realizing this allocation on top of ``config``."""
        out = [Override(c.name, weights=config.weights_at(c.weight_bits)) for c in self.layers if not c.pinned]
        out += [Override(name, activations=config.activations_at(bits)) for name, bits in self.activations.items()]
        return tuple(out)

    def to_config(self, config: QuantConfig) -> QuantConfig:
        """``config`` with this allocation's overrides taking precedence over its own."""
        return replace(config, overrides=self.overrides(config) + tuple(config.overrides))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Allocation":
        return cls(Budget.from_dict(d["budget"]), d["sensitivity"], [LayerChoice(**c) for c in d["layers"]],
                   dict(d["activations"]), d["weight_bytes"], d["float_bytes"], d["bops"], dict(d.get("seconds", {})),
                   dict(d.get("sensitivity_options", {})), d.get("activation_bytes", 0.0),
                   d.get("float_activation_bytes", 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget.to_dict(), "sensitivity": self.sensitivity,
                "layers": [vars(c) for c in self.layers], "activations": self.activations,
                "weight_bytes": self.weight_bytes, "float_bytes": self.float_bytes,
                "compression": self.compression, "bops": self.bops, "seconds": self.seconds,
                "sensitivity_options": self.sensitivity_options, "bit_cfg": self.bit_cfg,
                "activation_bytes": self.activation_bytes, "float_activation_bytes": self.float_activation_bytes,
                "total_compression": self.total_compression}


def calibrated_copies(model: nn.Module, images: torch.Tensor, config: QuantConfig, bits: Iterable[int],
                       mixed_acts: bool, chunk: int, capture: Mode | None = None) -> dict[int, nn.Module]:
    copies, covariances = {}, {}
    batches = [images[i : i + chunk] for i in range(0, len(images), chunk)]
    for b in sorted(set(bits)):
        cfg = replace(config, weights=config.weights_at(b),
                      activations=config.activations_at(b) if mixed_acts else config.activations)
        qmodel = prepare(model, cfg, capture)
        # the layers' float inputs are the same at every width: measured once
        covariances = calibrate_weights(qmodel, batches, known=covariances)
        calibrate_activations(qmodel, batches)
        copies[b] = qmodel
    return copies


def _pinned_widths(copies: dict[int, nn.Module], layers: list[LayerCost]) -> tuple[dict[str, int], dict[str, int]]:
    """Layers and activations whose width the config fixes (an override wins over every candidate width)."""
    weights, acts = {}, {}
    for b, qmodel in copies.items():
        modules = dict(qmodel.named_modules())
        for cost in layers:
            wbits = modules[cost.name].weight_quant.spec.bits
            if wbits != b:
                weights[cost.name] = wbits
            if cost.input is not None and modules[cost.input].spec.bits != b:
                acts[cost.input] = modules[cost.input].spec.bits
    return weights, acts


@dataclass
class Analysis:
    """A model's sensitivity per layer and candidate width, with its costs: the budget-independent half of an
    allocation, so that several budgets can be solved from one (possibly slow) analysis."""

    sensitivity: str
    bits: tuple[int, ...]
    activation_bits: tuple[int, ...] | None
    layers: list[LayerCost]
    scores: Scores
    problem: Problem
    pinned: set[str]
    seconds: dict[str, float]
    sensitivity_options: dict[str, Any] = field(default_factory=dict)

    @property
    def float_bytes(self) -> int:
        return sum(4 * c.params for c in self.layers)

    @property
    def float_activation_bytes(self) -> int:
        """The largest layer input (one sample) in float32."""
        return max((4 * c.input_elements for c in self.layers), default=0)


def analyze(model: nn.Module, images: torch.Tensor, config: QuantConfig, bits: tuple[int, ...] = (2, 4, 8),
            activation_bits: tuple[int, ...] | None = None, sensitivity: Sensitivity = "hessian",
            chunk: int = 64, sensitivity_options: Mapping[str, Any] | None = None,
            capture: Mode | None = None) -> Analysis:
    """Score every layer of ``model`` at each of ``bits`` (and each layer input at ``activation_bits``).

    ``images`` is a calibration batch used both to calibrate each candidate width and to score it. Layers that
    ``config``'s overrides fix (``first_last_bits``, ``--override``) keep their width and still count in the
    budget. ``sensitivity_options`` are the metric's own keywords (``beta`` for orthogonality). ``capture`` is
    how the model is prepared (``"swap"`` keeps a codec's class; see :func:`lowbit.graph.prepare`).
    """
    score = METRICS.get(sensitivity)
    options = dict(sensitivity_options or {})
    bits = tuple(sorted(set(bits)))
    activation_bits = None if activation_bits is None else tuple(sorted(set(activation_bits)))
    mixed_acts = activation_bits is not None
    if mixed_acts and config.activations is None:
        raise LowbitError("mixed activation widths need quantized activations; set activation bits, or drop "
                          "activation_bits from the budget")
    act_bits = tuple(activation_bits or ())
    timings: dict[str, float] = {}
    start = time.perf_counter()
    copies = calibrated_copies(model, images, config, set(bits) | set(act_bits), mixed_acts, chunk, capture)
    layers = describe_layers(next(iter(copies.values())), images)
    pinned_w, pinned_a = _pinned_widths(copies, layers)
    names = [c.name for c in layers if c.name not in pinned_w]
    acts = sorted({c.input for c in layers if c.input is not None and c.input not in pinned_a}) if mixed_acts else []
    timings["calibrate"] = time.perf_counter() - start
    start = time.perf_counter()
    task = ScoringTask(copies, images, names, bits, acts, act_bits, {c.name: c.input for c in layers}, config.seed)
    try:
        scores = score(task, **options)
    except TypeError as exc:
        raise LowbitError(f"bad option for the {sensitivity} sensitivity ({exc}); see `lowbit mixed --help`") from None
    timings["sensitivity"] = time.perf_counter() - start
    problem = _problem(layers, scores, pinned_w, pinned_a, copies, config, bits, mixed_acts)
    return Analysis(sensitivity, bits, activation_bits, layers, scores, problem, set(pinned_w), timings, options)


def solve_budget(analysis: Analysis, budget: Budget) -> Allocation:
    """The least-sensitivity allocation of ``analysis`` within ``budget`` (whose bit options it must share)."""
    if tuple(budget.bits) != analysis.bits or budget.activation_bits != analysis.activation_bits:
        raise LowbitError(f"budget bit options {budget.bits}/{budget.activation_bits} differ from the analysed "
                          f"{analysis.bits}/{analysis.activation_bits}; analyse with the budget's options")
    start = time.perf_counter()
    problem = sized_problem(analysis, budget.size_measure)
    float_total = analysis.float_bytes + analysis.float_activation_bytes
    solution = solve(problem, budget.max_weight_bytes(analysis.float_bytes), budget.max_bops(),
                     max_activation_bytes=budget.max_activation_bytes(analysis.float_activation_bytes),
                     max_total_bytes=budget.max_total_bytes(float_total))
    seconds = {**analysis.seconds, "solve": time.perf_counter() - start}
    rows = []
    for c in analysis.layers:
        w = solution.weights[c.name]
        rows.append(LayerChoice(c.name, c.params, w, solution.activations.get(c.input) if c.input else None,
                                analysis.scores.weights.get(c.name, {}).get(w, 0.0), problem.weight_bytes[c.name][w],
                                c.macs, c.name in analysis.pinned))
    chosen_acts = {q: a for q, a in solution.activations.items() if q in analysis.scores.activations}
    return Allocation(budget, analysis.sensitivity, rows, chosen_acts, solution.weight_bytes, analysis.float_bytes,
                      solution.bops, seconds, analysis.sensitivity_options, solution.activation_bytes,
                      analysis.float_activation_bytes)


def sized_problem(analysis: Analysis, size_measure: str) -> Problem:
    """The analysis's problem with sizes in the budget's measure (file bytes as analysed, or codes only)."""
    if size_measure == "file":
        return analysis.problem
    params = {c.name: c.params for c in analysis.layers}
    sizes = {name: {w: code_bytes(params[name], w) for w in options}
             for name, options in analysis.problem.weight_bytes.items()}
    return replace(analysis.problem, weight_bytes=sizes)


def allocate(model: nn.Module, images: torch.Tensor, config: QuantConfig, budget: Budget,
             sensitivity: Sensitivity = "hessian", chunk: int = 64,
             sensitivity_options: Mapping[str, Any] | None = None, capture: Mode | None = None) -> Allocation:
    """Choose a width per layer (and per layer input when ``budget.activation_bits`` is set) for ``model``:
    :func:`analyze`, then :func:`solve_budget`."""
    analysis = analyze(model, images, config, budget.bits, budget.activation_bits, sensitivity, chunk,
                       sensitivity_options, capture)
    return solve_budget(analysis, budget)


def _width(bits: int | str) -> int:
    """Bits counted for BOPs (fp16 counts as 16)."""
    return 16 if bits == "fp16" else int(bits)


def _problem(layers: list[LayerCost], scores: Scores, pinned_w: dict[str, int], pinned_a: dict[str, int],
             copies: dict[int, nn.Module], config: QuantConfig, bits: tuple[int, ...], mixed_acts: bool) -> Problem:
    any_copy = next(iter(copies.values()))
    modules = dict(any_copy.named_modules())
    weight_scores, sizes, inputs, act_scores = {}, {}, {}, {}
    for c in layers:
        if c.name in pinned_w:
            spec = modules[c.name].weight_quant.spec
            weight_scores[c.name] = {_width(spec.bits): 0.0}
            sizes[c.name] = {_width(spec.bits): weight_bytes(c.params, c.channels, spec)}
        else:
            weight_scores[c.name] = dict(scores.weights[c.name])
            sizes[c.name] = {b: weight_bytes(c.params, c.channels, config.weights_at(b)) for b in bits}
        inputs[c.name] = c.input
        if c.input is None or c.input in act_scores:
            continue
        if mixed_acts and c.input not in pinned_a:
            act_scores[c.input] = dict(scores.activations[c.input])
        else:
            act_scores[c.input] = {_width(modules[c.input].spec.bits): 0.0}
    elements: dict[str, int] = {}
    for c in layers:
        if c.input is not None:
            elements[c.input] = max(elements.get(c.input, 0), c.input_elements)
    float_inputs = max((c.input_elements for c in layers if c.input is None), default=0)
    return Problem(weight_scores, sizes, {c.name: c.macs for c in layers}, inputs, act_scores, FLOAT_BITS, elements,
                   float_inputs)
