import pytest
import torch

import lowbit
from conftest import ResidualNet, TinyViT
from lowbit import LowbitError
from lowbit.data.scale_check import check_input_scale


@pytest.fixture
def trained_statistics(images):
    """A model whose batch-norm statistics were recorded on ``images`` (as training would)."""
    torch.manual_seed(0)
    model = ResidualNet().train()
    with torch.no_grad():
        for _ in range(20):
            model(images)
    return model.eval()


@pytest.mark.parametrize("scale", [255.0, 1e30, 1e-3])
def test_images_off_the_training_scale_are_refused(trained_statistics, images, scale):
    with pytest.raises(LowbitError, match="not on the training data's scale"):
        lowbit.quantize(trained_statistics, images * scale, weights_bits=8, activation_bits=8)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_images_on_the_training_scale_pass(trained_statistics, images, scale):
    check_input_scale(trained_statistics, images * scale)


def test_models_without_batchnorm_are_not_checked():
    check_input_scale(TinyViT().eval(), torch.randn(4, 1, 16, 16) * 1e6)
