import pytest
import torch
from torch import nn

from lowbit import qmath
from lowbit.layers import QConv2d, QLinear, to_quantized
from lowbit.spec import activation_spec, weight_spec


def test_quantized_conv_matches_float_conv_when_off(device):
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, groups=1, device=device)
    q = to_quantized(conv, weight_spec(4))
    x = torch.randn(2, 3, 9, 9, device=device)
    assert isinstance(q, QConv2d) and isinstance(q, nn.Conv2d)
    torch.testing.assert_close(q(x), conv(x))


def test_freeze_stores_codes_and_exact_dequantized_weight(device):
    """The codes are each weight divided by its row's step, rounded, shifted by the zero point and clipped (a
    naive reference), and the frozen weight is exactly their dequantized value."""
    lin = nn.Linear(16, 8, device=device)
    w = lin.weight.detach().clone()
    q = to_quantized(lin, weight_spec(3))
    q.calibrate_weights()
    fq = q.fake_quant_weight().detach().clone()
    q.freeze()
    assert q.frozen and q.qweight.dtype == torch.int32 and q.qweight.device == q.weight.device
    scale, zp = q.weight_quant.scale.view(-1, 1), q.weight_quant.zero_point.view(-1, 1)
    assert scale.shape == (8, 1) and (scale > 0).all()  # one grid per output channel
    qmin, qmax = q.weight_quant.qrange
    expected = torch.clamp(torch.round(w / scale) + zp, qmin, qmax).to(torch.int32)
    assert torch.equal(q.qweight, expected)
    assert torch.equal(q.weight.detach(), (expected.float() - zp.float()) * scale)
    torch.testing.assert_close(q.weight.detach(), fq, rtol=2**-11, atol=1e-6)  # scales became float16 numbers


@pytest.mark.parametrize("bits", [2, 4])
def test_freeze_makes_weight_scales_float16_numbers_and_keeps_the_codes(bits):
    """Scales move to the nearest float16 number (two bytes a channel in a file), the codes stay; a channel
    whose weights are all zero gets the smallest normal float16 scale, and a live scale below float16's normal
    range, which float16 would round coarsely, stays as it was."""
    lin = nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight[3] = 0.0
        lin.weight[5] *= 1e-5
    q = to_quantized(lin, weight_spec(bits))
    q.calibrate_weights()
    before, codes = q.weight_quant.scale.clone(), q.integer_weight()
    q.freeze()
    after, zp = q.weight_quant.scale, q.weight_quant.zero_point
    live = torch.ones(8, dtype=torch.bool)
    live[[3, 5]] = False
    assert torch.equal(q.qweight, codes)
    assert torch.equal(after[live], before[live].half().float()) and not torch.equal(after[live], before[live])
    assert float(after[3]) == 2.0**-14 and float(after[5]) == float(before[5]) < 2.0**-14
    assert torch.equal(q.weight.detach(), qmath.dequantize(codes, after.view(-1, 1), zp.view(-1, 1)))


@pytest.mark.parametrize("bits", [8, 12])
def test_scales_of_grids_wider_than_4_bits_stay_float32(bits):
    """8-bit grids keep float32 scales, as int8 formats do; at 12 bits a float16 scale would move the largest
    codes by half a step."""
    q = to_quantized(nn.Linear(16, 8), weight_spec(bits))
    q.calibrate_weights()
    before = q.weight_quant.scale.clone()
    q.freeze()
    assert torch.equal(q.weight_quant.scale, before) and not torch.equal(before, before.half().float())


@pytest.mark.parametrize("bits", [3, 4])
def test_minmax_grid_spans_each_row_and_rounds_to_nearest(bits, device):
    """A min/max grid covers each row exactly: every weight lies within half a step of its quantized value, the
    row's extremes land on (or, for the signed grid's unpaired end, next to) the end codes, and the 2^bits codes
    are all the row can take."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 6, device=device)
    w = lin.weight.detach().clone()
    q = to_quantized(lin, weight_spec(bits, observer="minmax"))
    q.calibrate_weights()
    q.freeze()
    scale = q.weight_quant.scale.view(-1, 1)
    qmin, qmax = q.weight_quant.qrange
    assert qmax - qmin + 1 == 2**bits
    codes = q.qweight
    # within half a step, plus what moving the scale to a float16 number moved each weight (2**-11 at most)
    moved = (codes - q.weight_quant.zero_point.view(-1, 1)).abs() * scale * 2**-11
    assert ((q.weight.detach() - w).abs() <= scale / 2 * (1 + 1e-3) + moved).all()
    if q.weight_quant.spec.symmetric:  # step = max|w| / ((qmax - qmin) / 2)
        torch.testing.assert_close(scale.view(-1), w.abs().amax(1) / ((qmax - qmin) / 2), rtol=2**-11, atol=0)
        assert (codes.abs().amax(1) >= qmax).all()
    else:  # step = (max - min) / (qmax - qmin); the row's extremes map to the end codes
        torch.testing.assert_close(scale.view(-1), (w.amax(1) - w.amin(1)) / (qmax - qmin), rtol=2**-11, atol=0)
        assert (codes.amin(1) == qmin).all() and (codes.amax(1) == qmax).all()


def test_depthwise_conv_is_quantized_per_channel(device):
    conv = nn.Conv2d(6, 6, 3, groups=6, device=device)
    q = to_quantized(conv, weight_spec(4))
    q.calibrate_weights()
    assert q.weight_quant.scale.shape == (6,)


def test_fp16_weights_freeze_to_half_precision(device):
    q = to_quantized(nn.Linear(4, 4, device=device), weight_spec("fp16"))
    q.calibrate_weights()
    q.freeze()
    assert q.qweight.dtype == torch.float16
    torch.testing.assert_close(q.weight.detach(), q.qweight.float(), rtol=0, atol=0)


def test_weight_gradients_flow_through_fake_quant(device):
    q = to_quantized(nn.Linear(4, 3, device=device), weight_spec(4))
    q.calibrate_weights()
    q(torch.randn(2, 4, device=device)).sum().backward()
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0
    assert isinstance(q, QLinear)


def test_grids_of_a_swapped_layer_start_on_its_weight_device():
    """Module swapping quantizes the layer's input too: both grids must sit where the weight does."""
    q = to_quantized(nn.Conv2d(3, 4, 3, device="meta"), weight_spec(4), activation_spec(8))
    tensors = [q.weight, q.bias, *q.weight_quant.buffers(), *q.input_quant.buffers()]
    assert {t.device.type for t in tensors} == {"meta"}
