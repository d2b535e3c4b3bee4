"""Mixed precision through ``lowbit.quantize``: budgets are met by the saved file, pins hold, reload is exact."""

import pytest
import torch
from safetensors import safe_open

import lowbit
from conftest import ResidualNet, randomize_bn
from lowbit import LowbitError
from lowbit.config import QuantConfig
from lowbit.layers import quant_layers
from lowbit.mixed import Budget, allocate


@pytest.fixture(scope="module")
def net():
    return randomize_bn(ResidualNet()).eval()


@pytest.fixture(scope="module")
def data():
    return torch.randn(96, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _stored_weight_bytes(path, layer_names):
    total = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            layer, _, kind = key.rpartition(".")
            if layer in layer_names and kind in ("qweight", "scale", "zero_point"):
                t = f.get_tensor(key)
                total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("sensitivity", ["hessian", "measured", "orthogonality"])
def test_saved_file_meets_the_compression_target(net, data, tmp_path, sensitivity):
    q = lowbit.quantize(net, data, weights_bits=8, activation_bits=8, mixed=Budget(weights_cr=6),
                        sensitivity=sensitivity, sensitivity_images=64)
    mixed = q.lowbit_info.extra["mixed"]
    names = {n for n, _ in quant_layers(q)}
    path = lowbit.save(q, tmp_path / "m.lowbit")
    stored = _stored_weight_bytes(path, names)
    float_bytes = sum(4 * l.weight.numel() for _, l in quant_layers(q))
    assert stored == mixed["weight_bytes"]  # the size model is exact
    assert float_bytes / stored >= 6
    assert len({l.weight_quant.spec.bits for _, l in quant_layers(q)}) > 1  # really mixed
    reloaded = lowbit.load(path, model=ResidualNet())
    assert torch.equal(reloaded(data[:8]), q(data[:8]))
    assert reloaded.lowbit_info.extra["mixed"]["weight_bytes"] == stored


def test_pinned_first_and_last_layers_and_size_in_mib(net, data):
    q = lowbit.quantize(net, data, weights_bits=8, activation_bits=8, first_last_bits=8,
                        mixed=Budget(model_size_mb=2500 / 2**20), sensitivity_images=64)
    layers = q.lowbit_info.extra["mixed"]["layers"]
    assert layers[0]["pinned"] and layers[0]["weight_bits"] == 8
    assert layers[-1]["pinned"] and layers[-1]["weight_bits"] == 8
    assert q.lowbit_info.extra["mixed"]["weight_bytes"] <= 2500
    bits = {n: l.weight_quant.spec.bits for n, l in quant_layers(q)}
    assert bits["stem.0"] == 8 and bits["head"] == 8


def test_explicit_weight_observer_and_grid_hold_on_every_mixed_layer(net, data):
    q = lowbit.quantize(net, data, weights_bits=8, activation_bits=8, weights_observer="minmax",
                        symmetric_weights=False, mixed=Budget(weights_cr=6), sensitivity_images=64)
    specs = [l.weight_quant.spec for _, l in quant_layers(q)]
    assert len({s.bits for s in specs}) > 1
    assert all(s.observer == "minmax" and not s.symmetric for s in specs)


def test_mixed_activations_under_a_bops_budget(net, data):
    config = QuantConfig.from_bits(8, 8)
    full = allocate(net, data[:64], config, Budget(gbops=1e3, activation_bits=(4, 8)))
    assert all(c.input_bits == 8 and c.weight_bits == 8 for c in full.layers)  # no pressure: best widths
    tight = allocate(net, data[:64], config, Budget(gbops=full.bops / 1e9 / 3, activation_bits=(4, 8)))
    assert tight.bops <= full.bops / 3
    assert tight.bops == sum(c.macs * c.weight_bits * c.input_bits for c in tight.layers)
    assert 4 in tight.activations.values()
    q = lowbit.quantize(net, data, config, mixed=tight.budget, sensitivity_images=64)
    acts = dict((n, m) for n, m in q.named_modules() if n in tight.activations)
    assert {n: m.spec.bits for n, m in acts.items()} == tight.activations


def test_infeasible_budget_is_a_clear_error(net, data):
    with pytest.raises(LowbitError, match="infeasible.*smallest|infeasible.*at least"):
        lowbit.quantize(net, data, mixed=Budget(weights_cr=100), sensitivity_images=32)


def test_budget_validation():
    with pytest.raises(LowbitError, match="needs a target"):
        Budget()
    with pytest.raises(LowbitError, match="between 2 and 16"):
        Budget(weights_cr=8, bits=(1, 4))
    with pytest.raises(LowbitError, match="positive"):
        Budget(weights_cr=-1)
    b = Budget(weights_cr=8, model_size_mb=0.001, bits=(8, 2, 4, 4))
    assert b.bits == (2, 4, 8) and b.max_weight_bytes(8000) == 1000
    assert Budget.from_dict(b.to_dict()) == b


def test_one_analysis_serves_several_budgets(net, data):
    from lowbit.mixed import analyze, solve_budget
    analysis = analyze(net, data[:64], QuantConfig.from_bits(8, 8), (2, 4, 8))
    objectives = []
    for cr in (5, 6, 7):
        allocation = solve_budget(analysis, Budget(weights_cr=cr))
        assert allocation.compression >= cr
        objectives.append(sum(c.sensitivity for c in allocation.layers))
    assert objectives == sorted(objectives)  # tighter budgets cost sensitivity
    with pytest.raises(LowbitError, match="differ"):
        solve_budget(analysis, Budget(weights_cr=6, bits=(4, 8)))


def test_codes_only_measure_counts_weight_bits_and_reaches_further(net, data):
    from lowbit.mixed import analyze, solve_budget
    analysis = analyze(net, data[:64], QuantConfig.from_bits(8, 8), (2, 4, 8))
    file_cr = solve_budget(analysis, Budget(weights_cr=8)).compression
    codes = solve_budget(analysis, Budget(weights_cr=8, size_measure="codes"))
    assert codes.weight_bytes == sum(-(-c.params * c.weight_bits // 8) for c in codes.layers)
    assert codes.compression >= 8 and file_cr >= 8
    # all layers at 2 bits is 16x in codes, less once scales count: only the codes measure reaches it
    with pytest.raises(LowbitError, match="infeasible"):
        solve_budget(analysis, Budget(weights_cr=15.9))
    assert all(c.weight_bits == 2 for c in solve_budget(analysis, Budget(weights_cr=15.9, size_measure="codes")).layers)
    with pytest.raises(LowbitError, match="size measure"):
        Budget(weights_cr=8, size_measure="bits")
    assert Budget.from_dict(codes.budget.to_dict()).size_measure == "codes"


def test_total_memory_budget_counts_the_largest_activation_and_mixes_activations(net, data):
    """EPTQ's target: weights plus the largest activation tensor. Activations get widths of their own, and the
    total compression reported (and met) is checked against the sizes the layers' inputs really have."""
    from lowbit.mixed import analyze, solve_budget
    budget = Budget(total_cr=7, bits=(2, 4, 8))
    assert budget.activation_bits == (2, 4, 8)
    analysis = analyze(net, data[:64], QuantConfig.from_bits(8, 8), (2, 4, 8), (2, 4, 8))
    allocation = solve_budget(analysis, budget)
    elements = {}
    for c in analysis.layers:
        elements[c.input] = c.input_elements
    peak = max(elements[q] * b / 8 for q, b in allocation.activations.items())
    assert allocation.activation_bytes == peak
    assert allocation.float_activation_bytes == 4 * max(elements.values())
    assert allocation.total_compression >= 7
    # a weights-only budget at the same total leaves the activations at 8 bits: a worse total
    weights_only = solve_budget(analysis, Budget(weights_cr=7, bits=(2, 4, 8), activation_bits=(2, 4, 8)))
    assert weights_only.total_compression < 7
    with pytest.raises(LowbitError, match="infeasible.*largest activation"):
        solve_budget(analysis, Budget(activation_cr=17, bits=(2, 4, 8)))
