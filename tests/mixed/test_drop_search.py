"""An accuracy target: the smallest allocation whose top-1 classes stay within ``max_drop`` of the float model's."""

import pytest
import torch

import lowbit
from conftest import ResidualNet, randomize_bn
from lowbit import LowbitError
from lowbit.mixed import Budget
from lowbit.graph import activation_quantizers
from lowbit.mixed.drop_search import activation_ranking, changed_share, split_holdout, top1_classes

CALIB, HOLDOUT = 64, 256
MAX_DROP = 3.0


@pytest.fixture(scope="module")
def data():
    """Images that differ mostly by their colour, which survives the network's final average."""
    g = torch.Generator().manual_seed(0)
    n = CALIB + HOLDOUT + 32
    return torch.randn(n, 3, 1, 1, generator=g) * 2 + torch.randn(n, 3, 16, 16, generator=g) * 0.3


@pytest.fixture(scope="module")
def net(data):
    """A random network whose logits are standardized per class, so that its top-1 classes vary by image (a
    random head alone gives every image the same class, which no quantization changes)."""
    torch.manual_seed(0)
    net = randomize_bn(ResidualNet()).eval()
    with torch.no_grad():
        y = net(data)
        net.head.weight /= y.std(0)[:, None]
        net.head.bias.copy_((net.head.bias - y.mean(0)) / y.std(0))
    return net


def _search(net, data, max_drop, bits=(2, 4, 8)):
    return lowbit.quantize(net, data, weights_bits=8, activation_bits=8, calib_images=CALIB, sensitivity_images=64,
                           mixed=Budget(max_drop=max_drop, bits=bits, holdout_images=HOLDOUT))


@pytest.fixture(scope="module")
def found(net, data):
    return _search(net, data, max_drop=MAX_DROP)


def test_found_model_changes_at_most_max_drop_of_the_held_out_classes(net, data, found):
    holdout = data[CALIB : CALIB + HOLDOUT]
    changed = changed_share(found, holdout, top1_classes(net, holdout))
    search = found.lowbit_info.extra["mixed"]["search"]
    assert changed <= MAX_DROP and changed == pytest.approx(search["changed_pct"])
    probes = search["probes"]
    smallest = max(probes, key=lambda p: p["compression"])
    assert smallest["changed_pct"] > MAX_DROP  # every layer at 2 bits breaks this model: the search had work to do


def test_found_model_is_the_smallest_probe_that_passed(found):
    mixed = found.lowbit_info.extra["mixed"]
    probes = mixed["search"]["probes"]
    passing = [p for p in probes if p["changed_pct"] <= MAX_DROP]
    widest = min(p["compression"] for p in probes)
    assert mixed["compression"] == max(p["compression"] for p in passing) > widest
    assert 3 <= len(probes) <= 7 and len({tuple(p["bit_cfg"]) for p in probes}) == len(probes)


def test_calibration_images_are_those_of_a_plain_run_and_the_holdout_follows(data):
    batches = list(data.split(64))
    calib, holdout = split_holdout(batches, CALIB, HOLDOUT, 32)
    assert torch.equal(torch.cat(calib), data[:CALIB]) and [len(b) for b in calib] == [32, 32]
    assert torch.equal(holdout, data[CALIB : CALIB + HOLDOUT])
    with pytest.raises(LowbitError, match=f"needs {len(data)} held-out images beyond the {CALIB} calibration images, "
                                          f"and the data holds {len(data)}"):
        split_holdout(batches, CALIB, len(data), 32)


def test_a_target_no_width_meets_is_refused(net, data):
    with pytest.raises(LowbitError, match="even with 2-bit weights and float activations .* more than max_drop 0"):
        _search(net, data, max_drop=0.0, bits=(2,))


def test_saved_and_reloaded_with_its_search(found, net, data, tmp_path):
    lowbit.save(found, tmp_path / "d.lowbit")
    back = lowbit.load(str(tmp_path / "d.lowbit"), model=net)
    assert back.lowbit_info.extra["mixed"]["search"] == found.lowbit_info.extra["mixed"]["search"]
    x = data[:8]
    assert torch.equal(back(x), found(x))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_drop": -1}, "from 0 to below 100"),
    ({"max_drop": float("nan")}, "from 0 to below 100"),
    ({"max_drop": True}, "from 0 to below 100"),
    ({"max_drop": 1, "weights_cr": 8}, "drop weights_cr"),
    ({"max_drop": 1, "activation_bits": (4, 8)}, "drop activation_bits"),
    ({"max_drop": 1, "holdout_images": 3}, "at least 10"),
])
def test_bad_accuracy_targets_are_refused(kwargs, message):
    with pytest.raises(LowbitError, match=message):
        Budget(**kwargs)


def test_a_target_the_widest_weights_miss_leaves_the_fewest_activation_grids_float(net, data):
    widest = lowbit.quantize(net, data[:CALIB], weights_bits=8, activation_bits=8)
    holdout = data[CALIB : CALIB + HOLDOUT]
    reference = top1_classes(net, holdout)
    target = changed_share(widest, holdout, reference) / 2  # 8-bit weights and activations everywhere miss it
    found = _search(net, data, max_drop=target)
    search = found.lowbit_info.extra["mixed"]["search"]
    kept = search["float_activations"]
    assert changed_share(found, holdout, reference) <= target and search["changed_pct"] <= target
    assert 1 <= kept < len(activation_quantizers(widest))  # some grids, not all of them
    assert len(activation_quantizers(found)) == len(activation_quantizers(widest)) - kept
    assert all(p["float_activations"] == 0 or p["compression"] == min(q["compression"] for q in search["probes"])
               for p in search["probes"])  # grids are left out only at the widest weights


def test_activation_ranking_puts_the_grid_that_moves_the_outputs_most_first(net, data):
    qmodel = lowbit.quantize(net, data[:CALIB], weights_bits=8, activation_bits=8)
    names = [name for name, _ in activation_quantizers(qmodel)]
    coarse = dict(activation_quantizers(qmodel))[names[3]]
    coarse.scale.mul_(50)  # a grid 50 times too coarse: its layer's input is mostly clipped and rounded away
    order = activation_ranking(qmodel, net, data[:CALIB])
    assert order[0] == names[3] and sorted(order) == sorted(names)
    assert all(q.state == "quantize" for _, q in activation_quantizers(qmodel))  # each switched back on
