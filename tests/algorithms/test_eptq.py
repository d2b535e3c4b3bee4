"""EPTQ: the label-free Hessian diagonals, and the reconstruction loss they weight."""

import pytest
import torch
from torch import nn

from conftest import calibrated_w4a4, rounding_outcome, same_outcome
from lowbit.algorithms import brecq, eptq
from lowbit.algorithms.blocks import block_module, find_blocks
from lowbit.algorithms.hessian import activation_hessian_diagonals
from lowbit.algorithms.unit import float_copy

ITERS = 10
PROBES = 4


def _exact_diagonals(stages: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """Per sample, the diagonal of ``J^T (diag(p) - p p^T) J`` (J: Jacobian of the logits with respect to a stage
    output), averaged over positions: what Hutchinson's estimator converges to."""
    acts, a = [], x
    with torch.no_grad():
        for s in stages:
            a = s(a)
            acts.append(a)
    p = acts[-1].softmax(-1)
    result = []
    for k, act in enumerate(acts):

        def tail(a: torch.Tensor, k: int = k) -> torch.Tensor:
            for s in stages[k + 1:]:
                a = s(a)
            return a

        rows = []
        for n in range(len(x)):
            jac = torch.autograd.functional.jacobian(tail, act[n : n + 1]).reshape(p.shape[1], -1)
            curvature = torch.diag(p[n]) - torch.outer(p[n], p[n])
            diag = torch.einsum("ci,cd,di->i", jac, curvature, jac).reshape(act.shape[1], -1)
            rows.append(diag.mean(1))
        result.append(torch.stack(rows))
    return result


def test_hessian_diagonals_match_the_exact_gauss_newton_diagonal():
    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh()),
              nn.Sequential(nn.Flatten(), nn.Linear(48, 6), nn.Tanh()), nn.Linear(6, 4)]
    with torch.no_grad():
        stages[-1].weight.mul_(4)  # confident predictions: diag(p) - p p^T far from diag(p)
    x = torch.randn(5, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    exact = _exact_diagonals(stages, x)
    # the logits' own Hessian is diag(p) - p p^T, whose diagonal is p (1 - p)
    p = stages[-1](stages[1](stages[0](x))).softmax(-1).detach()
    torch.testing.assert_close(exact[-1], p * (1 - p))
    estimates = activation_hessian_diagonals(stages, x, n_probes=1000, chunk=2)
    assert [e.shape for e in estimates] == [(5, 3), (5, 6), (5, 4)]
    for est, ref in zip(estimates, exact):
        assert ref.std() / ref.mean() > 0.1  # the elements differ: uniform weights would be wrong
        torch.testing.assert_close(est, ref, rtol=0.2, atol=0)
        assert est.sum() == pytest.approx(ref.sum(), rel=0.05)


def test_block_losses_are_weighted_by_normalized_hessian_diagonals(w4a4_setup, monkeypatch):
    """Each block's loss weights are its output's Hessian diagonals (per sample and channel) scaled to mean 1."""
    q = calibrated_w4a4(w4a4_setup)
    seen = {}

    def spy(qmodel, batches, options, progress=False, weighting=None, name=""):
        seen["weighting"] = weighting

    monkeypatch.setattr(eptq, "reconstruct", spy)
    calib = w4a4_setup[1]
    eptq.run(q, [calib], eptq.EptqOptions(iters=ITERS, hessian_probes=PROBES))
    fp = float_copy(q)
    blocks = find_blocks(q)
    diagonals = activation_hessian_diagonals([block_module(fp, b) for b in blocks], calib, PROBES, seed=0)
    everyone = torch.arange(len(calib))
    for block, diag in zip(blocks, diagonals):
        weights = seen["weighting"](block, everyone)
        assert weights.shape[:2] == diag.shape
        flat = weights.reshape(diag.shape)
        assert flat.mean().item() == pytest.approx(1.0, rel=1e-5)
        torch.testing.assert_close(flat, diag / diag.mean())
        assert flat.std() > 0.1, block.output  # not (close to) uniform
        assert torch.equal(seen["weighting"](block, everyone[:5]).reshape(5, -1), flat[:5])


def test_hessian_weighting_changes_the_result_and_uniform_weights_give_brecq(w4a4_setup, monkeypatch):
    calib = w4a4_setup[1]
    reference = calibrated_w4a4(w4a4_setup)
    brecq.run(reference, [calib], brecq.BrecqOptions(iters=ITERS))
    weighted = calibrated_w4a4(w4a4_setup)
    eptq.run(weighted, [calib], eptq.EptqOptions(iters=ITERS, hessian_probes=PROBES))
    assert not same_outcome(rounding_outcome(weighted), rounding_outcome(reference))

    real_reconstruct = eptq.reconstruct

    def uniform(qmodel, batches, method, progress=False, weighting=None):
        def ones(block, idx):
            return torch.ones_like(weighting(block, idx))

        real_reconstruct(qmodel, batches, method, progress, weighting=ones)

    monkeypatch.setattr(eptq, "reconstruct", uniform)
    unweighted = calibrated_w4a4(w4a4_setup)
    eptq.run(unweighted, [calib], eptq.EptqOptions(iters=ITERS, hessian_probes=PROBES))
    assert same_outcome(rounding_outcome(unweighted), rounding_outcome(reference))
