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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_model_quantized_in_another_dtype_reloads_into_that_architecture(images, dtype, tmp_path):
    """The file holds the float32 copy that was quantized; loading it into the caller's architecture (in its own
    dtype, as it was quantized) gives the same model, with the same interface."""
    torch.manual_seed(0)
    model = randomize_bn(ResidualNet()).to(dtype)
    q = lowbit.quantize(model, images.to(dtype), weights_bits=4, activation_bits=8)
    lowbit.save(q, tmp_path / "m.lowbit")
    loaded = lowbit.load(tmp_path / "m.lowbit", model=ResidualNet().to(dtype))
    with torch.no_grad():
        expected, out = q(images.to(dtype)), loaded(images.to(dtype))
    assert out.dtype == dtype and torch.equal(out, expected)


def test_mixed_parameter_dtypes_are_refused(images):
    model = ResidualNet()
    model.head.half()
    with pytest.raises(LowbitError, match="mixes parameter dtypes"):
        lowbit.quantize(model, images)
