"""QDrop: during block reconstruction, activation quantization is dropped at random with probability drop_prob."""

import pytest
import torch

from conftest import calibrated_w4a4, rounding_outcome, same_outcome
from lowbit.algorithms import brecq, qdrop
from lowbit.graph import activation_quantizers

ITERS = 10


def test_quantizers_inside_a_block_keep_the_float_value_with_drop_prob(w4a4_setup, monkeypatch):
    """Of the elements quantization would change, the fraction passed through unquantized during the optimization
    steps is drop_prob; once reconstruction ends, nothing is dropped any more."""
    q = calibrated_w4a4(w4a4_setup)
    counts = {"changed": 0, "kept_float": 0}
    real_drop = qdrop._drop

    def counted_drop(module, args, out, p):  # what each activation quantizer finally returns during a step
        dropped = real_drop(module, args, out, p)
        if torch.is_grad_enabled():  # only the optimization steps (evaluations run without gradients)
            x = args[0]
            with torch.no_grad():
                changed = module.fake_quantize(x) != x
                counts["changed"] += int(changed.sum())
                counts["kept_float"] += int((changed & (dropped == x)).sum())
        return dropped

    monkeypatch.setattr(qdrop, "_drop", counted_drop)
    quantizers = [aq for _, aq in activation_quantizers(q)]
    drop_prob = 0.3
    qdrop.run(q, [w4a4_setup[1]], qdrop.QDropOptions(iters=ITERS, drop_prob=drop_prob))
    assert counts["changed"] > 100_000
    assert counts["kept_float"] / counts["changed"] == pytest.approx(drop_prob, abs=0.01)
    assert all(not aq._forward_hooks for aq in quantizers)  # the dropping hooks are gone
    with torch.no_grad():
        assert torch.equal(q(w4a4_setup[1]), q(w4a4_setup[1]))


def test_block_inputs_mix_float_and_quantized_values(w4a4_setup):
    """The second block's first conv reads the block input: during QDrop's optimization steps it sees values on the
    previous block's output grid (quantized) next to values off it (float), in comparable numbers."""
    q = calibrated_w4a4(w4a4_setup)
    grid = dict(activation_quantizers(q))["act_quant.stem_2"]
    counts = {"on_grid": 0, "off_grid": 0}

    def count(module, inputs):
        if not torch.is_grad_enabled():
            return
        x = inputs[0].detach()
        steps = x / grid.scale.detach()  # a non-negative ReLU output on an affine grid with an integer zero point
        on = (steps - steps.round()).abs() < 1e-3
        nonzero = x != 0
        counts["on_grid"] += int((on & nonzero).sum())
        counts["off_grid"] += int((~on & nonzero).sum())

    hook = q.get_submodule("b1.0").register_forward_pre_hook(count)
    qdrop.run(q, [w4a4_setup[1]], qdrop.QDropOptions(iters=ITERS, drop_prob=0.5))
    hook.remove()
    total = counts["on_grid"] + counts["off_grid"]
    assert total > 10_000
    assert 0.2 < counts["off_grid"] / total < 0.8, counts


def test_qdrop_differs_from_brecq_and_without_dropping_is_brecq(w4a4_setup):
    """With the same seed and steps, drop_prob=0 reproduces BRECQ exactly; the default drop_prob changes the result."""
    _, calib = w4a4_setup
    reference = calibrated_w4a4(w4a4_setup)
    brecq.run(reference, [calib], brecq.BrecqOptions(iters=ITERS))
    no_drop = calibrated_w4a4(w4a4_setup)
    qdrop.run(no_drop, [calib], qdrop.QDropOptions(iters=ITERS, drop_prob=0.0))
    dropped = calibrated_w4a4(w4a4_setup)
    qdrop.run(dropped, [calib], qdrop.QDropOptions(iters=ITERS))
    assert qdrop.QDropOptions().drop_prob == 0.5
    assert same_outcome(rounding_outcome(no_drop), rounding_outcome(reference))
    assert not same_outcome(rounding_outcome(dropped), rounding_outcome(reference))
