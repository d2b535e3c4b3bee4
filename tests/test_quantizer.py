"""``Quantizer`` grids live on the device of the tensor they quantize, wherever they were computed.

The meta device stands in for a GPU: a CPU tensor next to a meta tensor is exactly the mixing a CUDA model
would hit, and it is caught on any machine.
"""

import torch

from lowbit.quantizer import Quantizer
from lowbit.spec import activation_spec, weight_spec

META = torch.device("meta")


def test_placeholders_are_created_on_the_requested_device():
    q = Quantizer(weight_spec(4), device="meta")
    assert q.scale.device == META and q.zero_point.device == META


def test_weight_grid_follows_the_weight_it_was_measured_on():
    q = Quantizer(weight_spec(4))  # built on the CPU, then calibrated on a weight that lives elsewhere
    q.calibrate_to(torch.empty(6, 3, 3, 3, device="meta"))
    assert q.scale.device == META and q.zero_point.device == META
    assert q.scale.shape == (6,)


def test_grids_computed_on_the_cpu_land_on_the_quantizer_device():
    q = Quantizer(weight_spec(4), device="meta")
    q.set_qparams(torch.full((5,), 0.1), torch.zeros(5, dtype=torch.int32))  # as read from a file
    assert q.scale.device == META and q.zero_point.device == META


def test_observed_grid_lands_on_the_quantizer_device():
    q = Quantizer(activation_spec(8), device="meta")
    q.set_state("observe")
    q(torch.randn(1000))  # the observer keeps its statistics on the CPU
    assert q.finish_calibration()
    assert q.scale.device == META and q.zero_point.device == META


def test_restoring_a_learned_scale_keeps_the_device():
    q = Quantizer(activation_spec(8), device="meta")
    q.learn_scale()
    q.set_qparams(torch.tensor([0.05]), torch.tensor([3]))
    assert not isinstance(q.scale, torch.nn.Parameter)
    assert q.scale.device == META and q.zero_point.device == META
