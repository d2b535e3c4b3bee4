import itertools

import numpy as np
import pytest
import scipy.optimize

from lowbit import LowbitError
from lowbit.mixed import Problem, solve


def _random_problem(rng: np.random.Generator, n_layers: int, n_acts: int, act_bits=(4, 8)) -> Problem:
    layers = [f"l{i}" for i in range(n_layers)]
    acts = [f"a{i}" for i in range(n_acts)]
    inputs = {l: (acts[rng.integers(n_acts)] if n_acts and rng.random() < 0.8 else None) for l in layers}
    scores, sizes, macs = {}, {}, {}
    for l in layers:
        params = int(rng.integers(10, 1000))
        # sensitivities fall with bits, as real ones do, but with layer-specific slopes
        base = rng.random() * 10
        scores[l] = {b: base * 2.0 ** (-b) * rng.uniform(0.5, 1.5) for b in (2, 4, 8)}
        sizes[l] = {b: params * b // 8 + 4 for b in (2, 4, 8)}
        macs[l] = int(rng.integers(100, 10_000))
    act_scores = {a: {b: rng.random() * 2.0 ** (-b) for b in act_bits} for a in acts if a in inputs.values()}
    return Problem(scores, sizes, macs, inputs, act_scores)


def _brute_force(p: Problem, max_bytes=None, max_bops=None, max_act=None, max_total=None):
    """(objective, peak activation bytes) of the best choice within every cap, by enumeration."""
    layers, acts = list(p.weight_scores), list(p.act_scores)
    best = None
    for wchoice in itertools.product(*(sorted(p.weight_scores[l]) for l in layers)):
        for achoice in itertools.product(*(sorted(p.act_scores[a]) for a in acts)):
            w, a = dict(zip(layers, wchoice)), dict(zip(acts, achoice))
            size = sum(p.weight_bytes[l][w[l]] for l in layers)
            bops = sum(p.macs[l] * w[l] * (a[p.inputs[l]] if p.inputs[l] else p.float_bits) for l in layers)
            peak = max([p.activation_bytes(q, a[q]) for q in acts] + [p.float_input_elements * p.float_bits / 8])
            if any(cap is not None and value > cap for value, cap in
                   ((size, max_bytes), (bops, max_bops), (peak, max_act), (size + peak, max_total))):
                continue
            obj = sum(p.weight_scores[l][w[l]] for l in layers) + sum(p.act_scores[q][a[q]] for q in acts)
            if best is None or obj < best[0] - 1e-12:
                best = (obj, peak)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_solver_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    p = _random_problem(rng, n_layers=int(rng.integers(2, 6)), n_acts=int(rng.integers(0, 3)))
    full = sum(max(s.values()) for s in p.weight_bytes.values())
    least = p.smallest_weight_bytes()
    max_bytes = least + rng.random() * (full - least)
    max_bops = None
    if seed % 2:
        top = sum(p.macs[l] * 8 * max(p.input_options(l)) for l in p.weight_scores)
        max_bops = p.smallest_bops() + rng.random() * (top - p.smallest_bops())
    expected = _brute_force(p, max_bytes, max_bops)
    if expected is None:
        with pytest.raises(LowbitError, match="infeasible"):
            solve(p, max_bytes, max_bops)
        return
    got = solve(p, max_bytes, max_bops)
    assert got.objective == pytest.approx(expected[0], rel=1e-7, abs=1e-12)
    assert got.weight_bytes <= max_bytes
    if max_bops is not None:
        assert got.bops <= max_bops * (1 + 1e-9)
    # reported totals agree with the choices
    assert got.weight_bytes == sum(p.weight_bytes[l][b] for l, b in got.weights.items())


def test_shared_activation_gets_one_width():
    p = Problem(weight_scores={"a": {4: 1.0, 8: 0.0}, "b": {4: 1.0, 8: 0.0}},
                weight_bytes={"a": {4: 10, 8: 20}, "b": {4: 10, 8: 20}}, macs={"a": 100, "b": 100},
                inputs={"a": "x", "b": "x"}, act_scores={"x": {4: 0.5, 8: 0.0}})
    got = solve(p, max_weight_bytes=40, max_bops=100 * 8 * 4 + 100 * 8 * 4)
    assert got.activations == {"x": 4} and got.weights == {"a": 8, "b": 8}


def test_pinned_layer_keeps_its_only_option():
    p = Problem(weight_scores={"a": {8: 0.0}, "b": {2: 5.0, 4: 1.0, 8: 0.0}},
                weight_bytes={"a": {8: 100}, "b": {2: 10, 4: 20, 8: 40}}, macs={"a": 1, "b": 1},
                inputs={"a": None, "b": None})
    got = solve(p, max_weight_bytes=125)
    assert got.weights == {"a": 8, "b": 4}


def test_infeasible_budget_names_the_smallest_size():
    p = Problem(weight_scores={"a": {2: 1.0, 8: 0.0}}, weight_bytes={"a": {2: 2048, 8: 8192}}, macs={"a": 1},
                inputs={"a": None})
    with pytest.raises(LowbitError, match=r"at least 2\.0 KiB.*allows 1\.0 KiB"):
        solve(p, max_weight_bytes=1024)


def test_resnet50_sized_problem_is_one_exact_program_of_linear_size(monkeypatch):
    """A ResNet-50-sized problem (54 layers, 54 mixed activations, 3 widths each) is one integer program with a
    variable per (layer, weight bits, input bits) and per (activation, bits), solved to proven optimality:
    no enumeration of joint choices, no per-layer sub-problems, no stop at the time limit."""
    calls = []

    def counted_milp(cost, **kwargs):
        result = real_milp(cost, **kwargs)
        calls.append((len(cost), kwargs["constraints"].A.shape[0], result))
        return result

    real_milp = scipy.optimize.milp
    monkeypatch.setattr(scipy.optimize, "milp", counted_milp)  # the solver imports it when it solves
    rng = np.random.default_rng(0)
    p = _random_problem(rng, n_layers=54, n_acts=54, act_bits=(2, 4, 8))
    full = sum(max(s.values()) for s in p.weight_bytes.values())
    top = sum(p.macs[l] * 8 * max(p.input_options(l)) for l in p.weight_scores)
    got = solve(p, max_weight_bytes=full / 2.5, max_bops=top / 6)
    assert len(calls) == 1
    n_vars, n_rows, result = calls[0]
    pairs = sum(len(p.weight_scores[l]) * len(p.input_options(l)) for l in p.weight_scores)
    assert n_vars == pairs + sum(len(s) for s in p.act_scores.values())
    assert n_vars <= 54 * 3 * 3 + 54 * 3
    fed = sum(1 for l in p.weight_scores if p.inputs[l] is not None)
    # one choice per layer and per activation, a tie per (fed layer, input width), the two caps
    assert n_rows == len(p.weight_scores) + len(p.act_scores) + 3 * fed + 2
    assert result.status == 0 and result.mip_gap <= 1e-9  # optimal, not stopped at the time limit
    assert got.objective == pytest.approx(result.fun)
    assert got.weight_bytes <= full / 2.5 and got.bops <= top / 6


def test_a_search_stopped_by_its_time_limit_is_not_reported_as_the_best(monkeypatch):
    p = _random_problem(np.random.default_rng(0), n_layers=4, n_acts=1)
    full = sum(max(s.values()) for s in p.weight_bytes.values())

    real_milp = scipy.optimize.milp

    def stopped_early(c, **kwargs):
        result = real_milp(c, **kwargs)
        result.status, result.message = 1, "Time limit reached"  # what HiGHS returns with a feasible incumbent
        return result

    monkeypatch.setattr(scipy.optimize, "milp", stopped_early)
    with pytest.raises(LowbitError, match="stopped before finding the best allocation"):
        solve(p, full, None)


@pytest.mark.parametrize("seed", range(10))
def test_memory_caps_match_brute_force(seed):
    """The largest activation tensor is a maximum over choices; the program still finds the exact optimum."""
    rng = np.random.default_rng(100 + seed)
    p = _random_problem(rng, n_layers=int(rng.integers(2, 5)), n_acts=int(rng.integers(1, 3)), act_bits=(2, 4, 8))
    p.act_elements = {q: int(rng.integers(100, 3000)) for q in p.act_scores}
    p.float_input_elements = int(rng.integers(0, 40)) if any(v is None for v in p.inputs.values()) else 0
    full_w = sum(max(s.values()) for s in p.weight_bytes.values())
    full_a = max([p.activation_bytes(q, 8) for q in p.act_scores] + [p.float_input_elements * 4])
    least_a = p.smallest_activation_bytes()
    max_act = least_a + rng.random() * (full_a - least_a) if seed % 2 else None
    max_total = p.smallest_weight_bytes() + least_a + rng.random() * (full_w + full_a) * 0.5 if seed % 3 else None
    if max_act is None and max_total is None:
        max_total = (full_w + full_a) / 3
    expected = _brute_force(p, max_act=max_act, max_total=max_total)
    if expected is None:
        with pytest.raises(LowbitError, match="infeasible"):
            solve(p, max_activation_bytes=max_act, max_total_bytes=max_total)
        return
    got = solve(p, max_activation_bytes=max_act, max_total_bytes=max_total)
    assert got.objective == pytest.approx(expected[0], rel=1e-7, abs=1e-12)
    if max_act is not None:
        assert got.activation_bytes <= max_act + 1e-6
    if max_total is not None:
        assert got.weight_bytes + got.activation_bytes <= max_total + 1e-6


def test_activation_cap_below_the_smallest_activation_is_named():
    p = Problem({"l": {2: 1.0, 8: 0.0}}, {"l": {2: 10, 8: 40}}, {"l": 1}, {"l": "a"}, {"a": {2: 1.0, 8: 0.0}},
                act_elements={"a": 800})
    with pytest.raises(LowbitError, match=r"largest activation needs at least 0\.2 KiB"):
        solve(p, max_activation_bytes=100)
    assert solve(p, max_activation_bytes=200).activations == {"a": 2}
