"""Learned rounding on a tiny residual network: better than nearest, binary rounding, exact reload, deterministic."""

import copy

import pytest
import torch

import lowbit
from conftest import ResidualNet, randomize_bn, with_inplace_relus
from lowbit.algorithms.blocks import block_module, find_blocks
from lowbit.algorithms.hessian import activation_hessian_diagonals
from lowbit.algorithms.reconstruct import float_copy
from lowbit.algorithms.soft_rounding import SoftRounding
from lowbit.config import QuantConfig
from lowbit.graph import prepare
from lowbit.layers import quant_layers

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
    # first and last layers at 8 bits, as in practice: a low-bit quantizer on the logits dominates otherwise
    common = dict(weights_bits=bits, activation_bits=bits, first_last_bits=8)
    nearest = lowbit.quantize(model, calib, bias_correction=False, **common)
    learned = lowbit.quantize(model, calib, method=method, iters=ITERS, **common)
    assert output_error(model, learned, test) < output_error(model, nearest, test)


def test_rounding_variables_end_binary_and_weights_on_grid(setup, device):
    model, calib, _ = on_device(setup, device)
    q = prepare(model, QuantConfig.from_bits(3, 3, method="brecq"))
    from lowbit.calibrate import calibrate
    from lowbit.algorithms import brecq
    calibrate(q, [calib])
    brecq.run(q, [calib], brecq.BrecqOptions(iters=ITERS))
    for _, layer in quant_layers(q):
        assert isinstance(layer.rounding, SoftRounding) and layer.rounding.hard
        offsets = layer.rounding.offsets()
        assert set(offsets.unique().tolist()) <= {0.0, 1.0}
        codes = layer.integer_weight()
        qmin, qmax = layer.weight_quant.qrange
        assert codes.min() >= qmin and codes.max() <= qmax


def test_hessian_diagonals_positive_and_finite(setup):
    model, calib, _ = setup
    q = prepare(model, QuantConfig.from_bits(8, 8))
    fp = float_copy(q)
    stages = [block_module(fp, b) for b in find_blocks(q)]
    diagonals = activation_hessian_diagonals(stages, calib[:32], n_probes=4)
    assert len(diagonals) == len(stages)
    for d in diagonals:
        assert d.shape[0] == 32 and torch.isfinite(d).all() and (d >= 0).all() and d.sum() > 0


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
    with pytest.raises(lowbit.LowbitError, match="bad option for method 'brecq'"):
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
