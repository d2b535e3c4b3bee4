"""Learned rounding on a tiny residual network: better than nearest, rounding down or up, exact reload,
deterministic."""

import copy

import pytest
import torch
from torch import nn

import lowbit
from conftest import ResidualNet, randomize_bn, with_inplace_relus
from lowbit.algorithms import brecq, soft_rounding, unit
from lowbit.algorithms.blocks import block_module, find_blocks
from lowbit.algorithms.hessian import activation_hessian_diagonals
from lowbit.algorithms.adaround import AdaRound, AdaRoundOptions
from lowbit.algorithms.unit import float_copy
from lowbit.algorithms.soft_rounding import SoftRounding
from lowbit.calibrate import calibrate, freeze
from lowbit.config import QuantConfig
from lowbit.graph import prepare
from lowbit.layers import quant_layers, to_quantized
from lowbit.spec import weight_spec

METHODS = ["adaround", "brecq", "qdrop", "eptq"]
ITERS = 150


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = randomize_bn(ResidualNet())
    calib = torch.randn(128, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    test = torch.randn(128, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    return model, calib, test


def on_device(setup, device):
    """The shared model (a copy: quantize moves the model it is given) and data on ``device``."""
    model, calib, test = setup
    return copy.deepcopy(model).to(device), calib.to(device), test.to(device)


def output_error(model, q, x):
    with torch.no_grad():
        return ((q(x) - model(x)).pow(2).mean() / model(x).pow(2).mean()).item()


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("method", METHODS)
def test_learned_rounding_beats_nearest(setup, method, bits, device):
    model, calib, test = on_device(setup, device)
    # first and last layers at 8 bits, as in practice: a low-bit quantizer on the logits dominates otherwise;
    # weight-MSE grids, on which nearest rounding leaves room on this tiny network
    common = dict(weights_bits=bits, activation_bits=bits, first_last_bits=8, weights_observer="mse")
    # the same grid, rounded to nearest and left as it is
    nearest = lowbit.quantize(model, calib, bias_correction=False, gain_correction=False, **common)
    learned = lowbit.quantize(model, calib, method=method, iters=ITERS, **common)
    assert output_error(model, learned, test) < output_error(model, nearest, test)


def test_learned_rounding_rounds_each_weight_down_or_up_and_departs_from_nearest(setup, device):
    """Every code is its float weight rounded down or up (never further), the frozen weight is exactly the code on
    the grid, and the learned choice differs from round-to-nearest for part of the weights."""
    model, calib, _ = on_device(setup, device)
    q = prepare(model, QuantConfig.from_bits(3, 3, method="brecq"))
    calibrate(q, [calib])
    nearest = {name: layer.integer_weight() for name, layer in quant_layers(q)}
    brecq.run(q, [calib], brecq.BrecqOptions(iters=60))
    learned = {name: layer.integer_weight() for name, layer in quant_layers(q)}
    differ = total = 0
    for name, layer in quant_layers(q):
        assert isinstance(layer.rounding, SoftRounding), name
        scale, zp = layer.weight_quant.grid(layer.weight.dim())
        qmin, qmax = layer.weight_quant.qrange
        down = torch.floor(layer.weight.detach() / scale) + zp
        codes = learned[name].to(down.dtype)
        assert ((codes == down.clamp(qmin, qmax)) | (codes == (down + 1).clamp(qmin, qmax))).all(), name
        differ += int((learned[name] != nearest[name]).sum())
        total += codes.numel()
    assert differ > 0.01 * total
    freeze(q)
    for name, layer in quant_layers(q):
        scale, zp = layer.weight_quant.grid(layer.weight.dim())
        assert torch.equal(layer.qweight, learned[name])
        assert torch.equal(layer.weight.detach(), (learned[name].float() - zp.float()) * scale)


@pytest.mark.parametrize("reg_weight", [0.01, 0.0])
def test_rounding_regularizer_drives_offsets_to_zero_or_one(reg_weight, monkeypatch):
    """With the annealed regularizer most soft offsets end near 0 or 1 (hardening them barely changes the layer);
    without it most stay in between, so the hard rounding would differ from what was optimized."""
    installed = []

    def keep(layer):
        installed.append(soft_rounding.install(layer))
        return installed[-1]

    monkeypatch.setattr(unit, "install", keep)
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    layer = to_quantized(linear, weight_spec(3))
    layer.calibrate_weights()
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = linear(x)
    method = AdaRound(AdaRoundOptions(iters=500, reg_weight=reg_weight))
    state = unit.EngineState(torch.device("cpu"), torch.Generator().manual_seed(0), None)
    unit.optimize_unit(layer, [layer], [], unit.UnitData(x, None, target), method, state)
    h = installed[0].h().detach()
    undecided = ((h > 0.1) & (h < 0.9)).float().mean().item()
    if reg_weight > 0:
        assert undecided < 0.3
    else:
        assert undecided > 0.6


def test_step_sizes_learned_at_rate_zero_leave_the_rounding_as_without_them(setup):
    """The step sizes' learning-rate schedule is theirs alone: the rounding variables keep their rate to the end
    whether or not step sizes are learned beside them, so learning them at rate 0 gives the same integer weights."""
    model, calib, _ = on_device(setup, "cpu")
    common = dict(weights_bits=4, activation_bits=4, first_last_bits=8, method="brecq", iters=60)
    fixed = lowbit.quantize(model, calib, learn_act_scale=False, **common)
    at_rate_zero = lowbit.quantize(model, calib, act_lr=0.0, **common)
    for (name, a), (_, b) in zip(quant_layers(fixed), quant_layers(at_rate_zero)):
        assert torch.equal(a.integer_weight(), b.integer_weight()), name


def test_hessian_diagonals_stay_on_the_model_device(setup):
    """The diagonals stay on the model device (meta stands in for a GPU): EPTQ weights every step with them."""
    q = prepare(copy.deepcopy(setup[0]).to("meta"), QuantConfig.from_bits(8, 8))
    fp = float_copy(q)
    stages = [block_module(fp, b) for b in find_blocks(q)]
    diagonals = activation_hessian_diagonals(stages, torch.empty(8, 3, 16, 16, device="meta"), n_probes=2)
    assert {d.device.type for d in diagonals} == {"meta"}


def test_reload_of_optimized_model_is_exact(setup, tmp_path, device):
    model, calib, test = on_device(setup, device)
    q = lowbit.quantize(model, calib, weights_bits=4, activation_bits=4, method="qdrop", iters=50)
    r = lowbit.load(lowbit.save(q, tmp_path / "q.lowbit"), model=ResidualNet(), device=device)
    with torch.no_grad():
        assert torch.equal(q(test), r(test))
    meta = lowbit.io.lowbit_file.read_metadata(tmp_path / "q.lowbit")
    assert meta["config"]["method_options"]["iters"] == 50 and meta["config"]["method_options"]["drop_prob"] == 0.5


def test_same_seed_gives_identical_integer_weights(setup, device):
    model, calib, _ = on_device(setup, device)
    runs = [lowbit.quantize(model, calib, weights_bits=3, activation_bits=4, method="eptq", iters=40, seed=7)
            for _ in range(2)]
    for (_, a), (_, b) in zip(quant_layers(runs[0]), quant_layers(runs[1])):
        assert torch.equal(a.qweight, b.qweight)


def test_bad_method_option_is_a_clear_error(setup):
    model, calib, _ = setup
    with pytest.raises(lowbit.LowbitError, match="method 'brecq' has no option itres"):
        lowbit.quantize(model, calib, method="brecq", itres=10)
    with pytest.raises(lowbit.LowbitError, match="drop_prob"):
        lowbit.quantize(model, calib, method="qdrop", drop_prob=1.5)


@pytest.mark.parametrize("method", ["adaround", "qdrop"])
def test_in_place_activations_do_not_change_learned_rounding(setup, method):
    model, calib, _ = setup
    inplace = with_inplace_relus(model)
    common = dict(weights_bits=4, activation_bits=8, first_last_bits=8, method=method, iters=50)
    a, b = lowbit.quantize(model, calib, **common), lowbit.quantize(inplace, calib, **common)
    for (_, la), (_, lb) in zip(quant_layers(a), quant_layers(b)):
        assert torch.equal(la.qweight, lb.qweight)
