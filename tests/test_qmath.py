import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit import qmath

bits_st = st.integers(2, 16)
values_st = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=64)
# no time limits: drawing and running examples is slow on a loaded machine, which says nothing of the code
ANY_MACHINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def naive_fake_quant(x: list[float], scale: float, zp: int, qmin: int, qmax: int) -> list[float]:
    """Element by element, dividing in float32 like the tensor code (ties must round the same way)."""
    out = []
    for v in x:
        q = min(max(round(float(np.float32(v) / np.float32(scale))) + zp, qmin), qmax)  # round(): half-to-even
        out.append((q - zp) * scale)
    return out


@ANY_MACHINE
@given(bits_st, st.booleans())
def test_qrange_has_2_to_the_bits_levels(bits, symmetric):
    lo, hi = qmath.qrange(bits, symmetric)
    assert hi - lo + 1 == 2**bits
    assert (lo < 0) == symmetric


@ANY_MACHINE
@given(values_st, bits_st, st.booleans())
def test_error_within_half_step_inside_range(values, bits, symmetric):
    x = torch.tensor(values)
    scale, zp = qmath.choose_qparams(x.min(), x.max(), bits, symmetric)
    qmin, qmax = qmath.qrange(bits, symmetric)
    fq = qmath.fake_quantize(x, scale, zp, qmin, qmax)
    # every value inside the covered range is within half a step (plus float slack)
    assert torch.all((fq - x).abs() <= scale / 2 + 1e-4 * x.abs().max().clamp_min(1))


@ANY_MACHINE
@given(values_st, bits_st, st.booleans())
def test_fake_quant_is_idempotent_and_matches_naive(values, bits, symmetric):
    x = torch.tensor(values)
    scale, zp = qmath.choose_qparams(x.min(), x.max(), bits, symmetric)
    qmin, qmax = qmath.qrange(bits, symmetric)
    once = qmath.fake_quantize(x, scale, zp, qmin, qmax)
    assert torch.equal(qmath.fake_quantize(once, scale, zp, qmin, qmax), once)
    ref = torch.tensor(naive_fake_quant(values, float(scale), int(zp), qmin, qmax))
    assert torch.allclose(once, ref, atol=float(scale) * 1e-3 + 1e-6)


@ANY_MACHINE
@given(values_st, bits_st)
def test_codes_stay_on_grid_and_dequantize_back(values, bits):
    x = torch.tensor(values)
    scale, zp = qmath.choose_qparams(x.min(), x.max(), bits, False)
    qmin, qmax = qmath.qrange(bits, False)
    q = qmath.quantize(x, scale, zp, qmin, qmax)
    assert q.min() >= qmin and q.max() <= qmax
    assert torch.allclose(qmath.dequantize(q, scale, zp), qmath.fake_quantize(x, scale, zp, qmin, qmax))


def test_zero_is_exactly_representable():
    x = torch.tensor([-0.3, 0.0, 1.7])
    for symmetric in (True, False):
        scale, zp = qmath.choose_qparams(x.min(), x.max(), 4, symmetric)
        fq = qmath.fake_quantize(x, scale, zp, *qmath.qrange(4, symmetric))
        assert fq[1] == 0


def test_zero_range_gives_finite_scale():
    for value in (0.0, 2.5, -1.0):
        x = torch.full((10,), value)
        scale, zp = qmath.choose_qparams(x.min(), x.max(), 8, False)
        assert torch.isfinite(scale).all() and scale > 0
        fq = qmath.fake_quantize(x, scale, zp, *qmath.qrange(8, False))
        assert torch.isfinite(fq).all()
        assert torch.allclose(fq, x, atol=abs(value) / 255 + 1e-6)


def test_straight_through_gradient():
    x = torch.tensor([0.1, 0.26, 5.0], requires_grad=True)
    scale, zp = torch.tensor(0.1), torch.tensor(0)
    qmath.fake_quantize(x, scale, zp, -8, 7).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]  # clipped values get no gradient


def test_fp16_rounding_saturates():
    x = torch.tensor([1.0 + 1e-4, 1e6, -1e6])
    y = qmath.fake_quantize_fp16(x)
    assert y[0] == torch.tensor(1.0 + 1e-4).half().float()
    assert torch.isfinite(y).all()


@ANY_MACHINE
@given(values_st, bits_st, st.booleans(), st.floats(2**-10, 8.0, width=32), st.integers(-3, 3))
def test_inference_path_matches_the_trainable_one(values, bits, symmetric, scale, zp_offset):
    x = torch.tensor(values)
    qmin, qmax = qmath.qrange(bits, symmetric)
    zp = torch.tensor([min(max(qmin + 2**(bits - 1) + zp_offset, qmin), qmax) if not symmetric else 0],
                      dtype=torch.int32)
    s = torch.tensor([scale])
    expected = torch.tensor(naive_fake_quant(values, scale, int(zp), qmin, qmax), dtype=torch.float32)
    assert torch.equal(qmath.fake_quantize_no_grad(x.clone(), s, zp, qmin, qmax), qmath.fake_quantize(x, s, zp, qmin, qmax))
    assert torch.allclose(qmath.fake_quantize_no_grad(x, s, zp, qmin, qmax), expected, rtol=0, atol=1e-6 * (1 + scale))


@settings(ANY_MACHINE, max_examples=60)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(1, 5), bits_st, st.booleans(), st.integers(1, 300),
       st.integers(0, 2**31 - 1))
def test_grid_errors_match_fake_quantize(n_rows, width, n_grids, bits, symmetric, block, seed):
    """Every candidate grid's summed squared error equals fake_quantize's, however the values are blocked."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(n_rows, width, generator=g) * 3
    shrink = torch.rand(n_grids, 1, generator=g) * 0.9 + 0.1
    scale, zp = qmath.choose_qparams(rows.amin(dim=1) * shrink, rows.amax(dim=1) * shrink, bits, symmetric)
    qmin, qmax = qmath.qrange(bits, symmetric)
    expected = torch.stack([((qmath.fake_quantize(rows, s.view(-1, 1), z.view(-1, 1), qmin, qmax) - rows) ** 2).sum(1)
                            for s, z in zip(scale, zp)])
    found = qmath.grid_errors(rows, scale, None if symmetric else zp, qmin, qmax, block_elements=block)
    assert torch.allclose(found, expected, rtol=1e-5, atol=1e-6 * float(rows.abs().max()) ** 2)
