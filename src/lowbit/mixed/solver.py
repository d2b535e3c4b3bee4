"""Exact bit allocation as an integer linear program (``scipy.optimize.milp``, HiGHS branch and bound).

Each layer picks one (weight bits, input bits) pair; each mixed activation picks one width, and every layer it
feeds must pick the same input width. Minimize the summed sensitivity subject to a weights-memory cap and a
BOPs cap. BOPs (MACs x weight bits x input bits) are bilinear in the two choices, which is why the layer
variables are pairs: with them every cost is linear and the program is exact, not a relaxation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

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


def solve(problem: Problem, max_weight_bytes: float | None = None, max_bops: float | None = None,
          time_limit: float = 60.0) -> Solution:
    """The allocation of least total sensitivity within the caps (exact up to HiGHS's integrality tolerance)."""
    layers = list(problem.weight_scores)
    pairs = [(l, w, a) for l in layers for w in sorted(problem.weight_scores[l]) for a in problem.input_options(l)]
    acts = [(q, a) for q in problem.act_scores for a in sorted(problem.act_scores[q])]
    col = {key: i for i, key in enumerate(pairs)}
    act_col = {key: len(pairs) + i for i, key in enumerate(acts)}
    n = len(pairs) + len(acts)
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

    matrix = lil_matrix((len(rows), n))
    for r, (coeffs, _, _) in enumerate(rows):
        for c, v in coeffs.items():
            matrix[r, c] = v
    constraints = LinearConstraint(matrix.tocsr(), [r[1] for r in rows], [r[2] for r in rows])
    result = milp(cost, constraints=constraints, integrality=np.ones(n), bounds=Bounds(0, 1),
                  options={"time_limit": time_limit, "mip_rel_gap": 1e-9})
    if result.status == 2:
        raise LowbitError(_infeasible_message(problem, max_weight_bytes, max_bops))
    if result.status != 0 or result.x is None:  # 1: the time limit stopped the search before it proved optimality
        raise LowbitError(f"the bit-allocation solver stopped before finding the best allocation ({result.message}); "
                          "fewer bit options or layers make the problem smaller")
    chosen = [key for key, i in col.items() if result.x[i] > 0.5]
    weights = {l: w for l, w, _ in chosen}
    activations = {q: a for (q, a), i in act_col.items() if result.x[i] > 0.5}
    size = sum(problem.weight_bytes[l][w] for l, w in weights.items())
    bops = float(sum(problem.macs[l] * w * a for l, w, a in chosen))
    return Solution(weights, activations, float(result.fun), size, bops)


def _infeasible_message(problem: Problem, max_weight_bytes: float | None, max_bops: float | None) -> str:
    parts = []
    smallest = problem.smallest_weight_bytes()
    if max_weight_bytes is not None and smallest > max_weight_bytes:
        parts.append(f"weights need at least {smallest / 1024:.1f} KiB (every layer at its fewest bits) but the "
                     f"budget allows {max_weight_bytes / 1024:.1f} KiB")
    least_bops = problem.smallest_bops()
    if max_bops is not None and least_bops > max_bops:
        parts.append(f"at least {least_bops / 1e9:.4g} GBOPs are needed but the budget allows {max_bops / 1e9:.4g}")
    reason = "; ".join(parts) or "the memory and BOPs caps cannot both be met by one allocation"
    return f"mixed-precision budget is infeasible: {reason}; relax the budget or add smaller bit options"
