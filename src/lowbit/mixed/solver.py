"""Exact bit allocation as an integer linear program (``scipy.optimize.milp``, HiGHS branch and bound).

Each layer picks one (weight bits, input bits) pair; each mixed activation picks one width, and every layer it
feeds must pick the same input width. Minimize the summed sensitivity subject to a weights-memory cap, a BOPs
cap, an activation-memory cap and a total-memory cap. BOPs (MACs x weight bits x input bits) are bilinear in
the two choices, which is why the layer variables are pairs: with them every cost is linear and the program is
exact, not a relaxation. Activation memory is the largest activation tensor (EPTQ's and earlier MCT's
measure), a maximum: one continuous variable bounded below by every activation's size at its chosen width
keeps that linear and exact too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lowbit.errors import LowbitError


@dataclass
class Problem:
    """Costs and scores per layer and per activation.

    ``weight_scores[layer][bits]`` and ``weight_bytes[layer][bits]`` list a layer's options (one entry for a
    pinned layer). ``inputs[layer]`` names the activation feeding it (None: a float input, counted at
    ``float_bits``), and ``act_scores[act][bits]`` lists that activation's options.
    """

    weight_scores: dict[str, dict[int, float]]
    weight_bytes: dict[str, dict[int, int]]
    macs: dict[str, int]
    inputs: dict[str, str | None]
    act_scores: dict[str, dict[int, float]] = field(default_factory=dict)
    float_bits: int = 32
    act_elements: dict[str, int] = field(default_factory=dict)  # per-sample size of each activation
    float_input_elements: int = 0  # the largest float (unquantized) input of a layer, per sample

    def activation_bytes(self, act: str, bits: int) -> float:
        return self.act_elements.get(act, 0) * bits / 8

    @property
    def float_input_bytes(self) -> float:
        """The largest float input: a floor under the activation memory whatever the widths."""
        return self.float_input_elements * self.float_bits / 8

    def largest_activation_bytes(self, widths: dict[str, int]) -> float:
        """The largest activation tensor (one sample) when each activation has the width ``widths`` gives."""
        return max([self.activation_bytes(q, bits) for q, bits in widths.items()] + [self.float_input_bytes])

    def smallest_activation_bytes(self) -> float:
        return self.largest_activation_bytes({q: min(options) for q, options in self.act_scores.items()})

    def input_options(self, layer: str) -> list[int]:
        act = self.inputs.get(layer)
        return sorted(self.act_scores[act]) if act is not None else [self.float_bits]

    def smallest_weight_bytes(self) -> int:
        return sum(min(b.values()) for b in self.weight_bytes.values())

    def smallest_bops(self) -> float:
        return sum(self.macs[l] * min(self.weight_bytes[l]) * min(self.input_options(l)) for l in self.weight_bytes)


@dataclass
class Solution:
    weights: dict[str, int]
    activations: dict[str, int]
    objective: float
    weight_bytes: int
    bops: float
    activation_bytes: float = 0.0


def solve(problem: Problem, max_weight_bytes: float | None = None, max_bops: float | None = None,
          time_limit: float = 60.0, max_activation_bytes: float | None = None,
          max_total_bytes: float | None = None) -> Solution:
    """The allocation of least total sensitivity within the caps (exact up to HiGHS's integrality tolerance).

    ``max_activation_bytes`` caps the largest activation tensor; ``max_total_bytes`` the weights plus it.
    """
    layers = list(problem.weight_scores)
    pairs = [(l, w, a) for l in layers for w in sorted(problem.weight_scores[l]) for a in problem.input_options(l)]
    acts = [(q, a) for q in problem.act_scores for a in sorted(problem.act_scores[q])]
    col = {key: i for i, key in enumerate(pairs)}
    act_col = {key: len(pairs) + i for i, key in enumerate(acts)}
    memory = max_activation_bytes is not None or max_total_bytes is not None
    peak = len(pairs) + len(acts)  # the activation-memory variable, when a memory cap needs it
    n = peak + 1 if memory else peak
    cost = np.zeros(n)
    for (l, w, a), i in col.items():
        cost[i] = problem.weight_scores[l][w]
    for (q, a), i in act_col.items():
        cost[i] = problem.act_scores[q][a]

    rows: list[tuple[dict[int, float], float, float]] = []
    for l in layers:  # one pair per layer
        rows.append(({col[p]: 1.0 for p in pairs if p[0] == l}, 1.0, 1.0))
    for q in problem.act_scores:  # one width per activation, shared by every layer it feeds
        rows.append(({act_col[(q, a)]: 1.0 for a in problem.act_scores[q]}, 1.0, 1.0))
        for l in (l for l in layers if problem.inputs.get(l) == q):
            for a in problem.act_scores[q]:
                coeffs = {col[(l, w, a)]: 1.0 for w in problem.weight_scores[l]}
                coeffs[act_col[(q, a)]] = -1.0
                rows.append((coeffs, 0.0, 0.0))
    if max_weight_bytes is not None:
        rows.append(({i: float(problem.weight_bytes[l][w]) for (l, w, a), i in col.items()}, -np.inf, max_weight_bytes))
    if max_bops is not None:
        rows.append(({i: float(problem.macs[l] * w * a) for (l, w, a), i in col.items()}, -np.inf, max_bops))
    if memory:
        for q in problem.act_scores:  # the peak is at least every activation at its chosen width
            coeffs = {act_col[(q, a)]: problem.activation_bytes(q, a) for a in problem.act_scores[q]}
            coeffs[peak] = -1.0
            rows.append((coeffs, -np.inf, 0.0))
    if max_total_bytes is not None:
        coeffs = {i: float(problem.weight_bytes[l][w]) for (l, w, a), i in col.items()}
        coeffs[peak] = 1.0
        rows.append((coeffs, -np.inf, max_total_bytes))

    # imported here: scipy.optimize is slow to import, and every command that reads a .lowbit file imports this
    # module (the file's mixed-precision record) without solving anything
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    matrix = lil_matrix((len(rows), n))
    for r, (coeffs, _, _) in enumerate(rows):
        for c, v in coeffs.items():
            matrix[r, c] = v
    constraints = LinearConstraint(matrix.tocsr(), [r[1] for r in rows], [r[2] for r in rows])
    integrality, lower, upper = np.ones(n), np.zeros(n), np.ones(n)
    if memory:  # continuous, at least the largest float input, at most the activation cap
        integrality[peak] = 0
        lower[peak] = problem.float_input_bytes
        upper[peak] = np.inf if max_activation_bytes is None else max(max_activation_bytes, lower[peak])
    result = milp(cost, constraints=constraints, integrality=integrality, bounds=Bounds(lower, upper),
                  options={"time_limit": time_limit, "mip_rel_gap": 1e-9})
    if result.status == 2 or (memory and max_activation_bytes is not None and lower[peak] > max_activation_bytes):
        raise LowbitError(_infeasible_message(problem, max_weight_bytes, max_bops, max_activation_bytes,
                                              max_total_bytes))
    if result.status != 0 or result.x is None:  # 1: the time limit stopped the search before it proved optimality
        raise LowbitError(f"the bit-allocation solver stopped before finding the best allocation ({result.message}); "
                          "fewer bit options or layers make the problem smaller")
    chosen = [key for key, i in col.items() if result.x[i] > 0.5]
    weights = {l: w for l, w, _ in chosen}
    activations = {q: a for (q, a), i in act_col.items() if result.x[i] > 0.5}
    size = sum(problem.weight_bytes[l][w] for l, w in weights.items())
    bops = float(sum(problem.macs[l] * w * a for l, w, a in chosen))
    return Solution(weights, activations, float(result.fun), size, bops, problem.largest_activation_bytes(activations))


def _infeasible_message(problem: Problem, max_weight_bytes: float | None, max_bops: float | None,
                        max_activation_bytes: float | None = None, max_total_bytes: float | None = None) -> str:
    parts = []
    smallest = problem.smallest_weight_bytes()
    if max_weight_bytes is not None and smallest > max_weight_bytes:
        parts.append(f"weights need at least {smallest / 1024:.1f} KiB (every layer at its fewest bits) but the "
                     f"budget allows {max_weight_bytes / 1024:.1f} KiB")
    least_bops = problem.smallest_bops()
    if max_bops is not None and least_bops > max_bops:
        parts.append(f"at least {least_bops / 1e9:.4g} GBOPs are needed but the budget allows {max_bops / 1e9:.4g}")
    least_act = problem.smallest_activation_bytes()
    if max_activation_bytes is not None and least_act > max_activation_bytes:
        parts.append(f"the largest activation needs at least {least_act / 1024:.1f} KiB but the budget allows "
                     f"{max_activation_bytes / 1024:.1f} KiB")
    if max_total_bytes is not None and smallest + least_act > max_total_bytes:
        parts.append(f"weights and activations need at least {(smallest + least_act) / 1024:.1f} KiB but the "
                     f"budget allows {max_total_bytes / 1024:.1f} KiB")
    reason = "; ".join(parts) or "the caps cannot all be met by one allocation"
    return f"mixed-precision budget is infeasible: {reason}; relax the budget or add smaller bit options"
