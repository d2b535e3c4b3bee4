import pytest
import torch

import lowbit
from conftest import ResidualNet, randomize_bn
from lowbit import LowbitError
from lowbit.evaluate import sqnr_db


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_models_in_other_float_dtypes_are_quantized_and_keep_their_interface(images, dtype):
    torch.manual_seed(0)
    model = randomize_bn(ResidualNet())
    reference = lowbit.quantize(model, images, weights_bits=8, activation_bits=8)
    low = model.to(dtype)
    q = lowbit.quantize(low, images.to(dtype), weights_bits=8, activation_bits=8)
    out = q(images.to(dtype))
    assert out.dtype == dtype and next(low.parameters()).dtype == dtype  # the caller's model is left as it was
    with torch.no_grad():
        assert sqnr_db(reference(images), out.float()) > 25


def test_mixed_parameter_dtypes_are_refused(images):
    model = ResidualNet()
    model.head.half()
    with pytest.raises(LowbitError, match="mixes parameter dtypes"):
        lowbit.quantize(model, images)
