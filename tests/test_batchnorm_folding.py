"""Batch-norm folded into the layer before it in a traced graph."""

import torch
from torch import nn

from lowbit.batchnorm_folding import fold_batchnorm
from lowbit.tracing import trace


def test_fold_batchnorm_preserves_outputs(residual_net, images):
    gm = trace(residual_net)
    assert fold_batchnorm(gm) == 6
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    with torch.no_grad():
        torch.testing.assert_close(gm(images), residual_net(images), rtol=1e-4, atol=1e-5)
