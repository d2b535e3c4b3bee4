"""``evaluating``: a model in eval mode inside the block and in its own mode after it, errors included."""

import pytest
from torch import nn

from lowbit.model_mode import evaluating


def test_models_are_evaluated_inside_and_keep_their_own_mode_after():
    training, frozen = nn.BatchNorm1d(3).train(), nn.BatchNorm1d(3).eval()
    with evaluating(training, frozen):
        assert not training.training and not frozen.training
    assert training.training and not frozen.training


def test_the_mode_comes_back_when_the_block_fails():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    with pytest.raises(RuntimeError), evaluating(model):
        assert not model[1].training
        raise RuntimeError("stop")
    assert model.training and model[1].training
