import pytest
import torch

import lowbit
from lowbit import qmath
from lowbit.observers import MSE_GRID, SAMPLE_LIMIT, SAMPLE_PER_BATCH, ActivationObserver, static_qparams
from lowbit.spec import QuantSpec, weight_spec


def _err(x, spec, scale, zp):
    return qmath.quantization_error(x, scale, zp, *qmath.qrange(spec.bits, spec.symmetric))


def test_mse_beats_minmax_on_heavy_tails():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=g) ** 3  # heavy-tailed
    mse, mm = QuantSpec(bits=4, observer="mse"), QuantSpec(bits=4, observer="minmax")
    assert _err(x, mse, *static_qparams(x, mse)) < 0.7 * _err(x, mm, *static_qparams(x, mm))


def test_percentile_clips_outliers():
    x = torch.cat([torch.linspace(0, 1, 100_000), torch.tensor([1000.0])])
    spec = QuantSpec(bits=8, observer="percentile", percentile=99.9)
    scale, _ = static_qparams(x, spec)
    assert scale < 0.01


def test_per_channel_weights_get_one_grid_per_output_channel():
    w = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).float().view(6, 1, 1, 1)
    spec = QuantSpec(bits=4, granularity="per_channel", observer="mse")
    scale, zp = static_qparams(w, spec)
    assert scale.shape == (6,) and zp.shape == (6,)
    assert scale[5] > scale[0]


def test_zero_channel_gets_finite_scale():
    w = torch.randn(4, 8)
    w[2] = 0.0
    for obs in ("minmax", "mse", "percentile"):
        scale, zp = static_qparams(w, QuantSpec(bits=4, granularity="per_channel", observer=obs))
        assert torch.isfinite(scale).all() and (scale > 0).all()


def test_activation_observer_accumulates_extremes_over_batches():
    obs = ActivationObserver(QuantSpec(bits=8, observer="minmax"))
    obs.observe(torch.tensor([0.0, 1.0, 0.37]))  # not evenly spaced: the range decides the grid
    obs.observe(torch.tensor([-2.0, 0.5]))
    scale, zp = obs.qparams()
    assert torch.isclose(scale, torch.tensor(3.0 / 255))


def test_activation_observer_sample_is_bounded_and_spread_over_each_batch():
    """Memory stays bounded whatever the batch size and count, and the kept values come from the whole batch."""
    obs = ActivationObserver(QuantSpec(bits=4, observer="mse"))
    half = SAMPLE_PER_BATCH * 4
    obs.observe(torch.cat([torch.zeros(half), torch.ones(half)]))  # one batch far larger than its share
    kept = torch.cat(obs.samples)
    assert kept.numel() == SAMPLE_PER_BATCH
    assert 0.45 < kept.mean() < 0.55  # drawn from both halves, not the first values of the batch
    for _ in range(SAMPLE_LIMIT // SAMPLE_PER_BATCH + 8):
        obs.observe(torch.randn(2 * SAMPLE_PER_BATCH))
    assert sum(s.numel() for s in obs.samples) == SAMPLE_LIMIT
    scale, _ = obs.qparams()
    assert torch.isfinite(scale)


def test_default_8_bit_weight_ranges_never_lose_to_minmax_per_channel():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 2048, generator=g) ** 5
    default, minmax = weight_spec(8), weight_spec(8, observer="minmax")
    errors = []
    for spec in (default, minmax):
        scale, zp = static_qparams(w, spec)
        qmin, qmax = qmath.qrange(spec.bits, spec.symmetric)
        errors.append(qmath.quantization_error(w, scale.view(-1, 1), zp.view(-1, 1), qmin, qmax, (1,)))
    assert torch.all(errors[0] <= errors[1]) and errors[0].sum() < 0.99 * errors[1].sum()


def _exhaustive_errors(rows, spec, lo=None, hi=None):
    """Per row, the least squared error over every factor of the search grid, one factor at a time through
    the plain fake-quantization path: the reference the faster search must keep up with."""
    qmin, qmax = qmath.qrange(spec.bits, spec.symmetric)
    lo = rows.amin(dim=1) if lo is None else lo
    hi = rows.amax(dim=1) if hi is None else hi
    errors = []
    for a in MSE_GRID.tolist():
        scale, zp = qmath.choose_qparams(lo * a, hi * a, spec.bits, spec.symmetric)
        errors.append(qmath.quantization_error(rows, scale.view(-1, 1), zp.view(-1, 1), qmin, qmax, (1,)))
    return torch.stack(errors).min(dim=0).values


def _weights(kind, shape, g):
    if kind == "gaussian":
        return torch.randn(*shape, generator=g) * 0.05
    if kind == "cubed":  # a few large weights per channel
        return torch.randn(*shape, generator=g) ** 3
    return torch.distributions.StudentT(torch.tensor(2.5)).sample(shape)  # heavier tails still


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 16])
@pytest.mark.parametrize("kind", ["gaussian", "cubed", "student_t"])
def test_mse_search_is_as_good_as_the_exhaustive_grid(bits, kind):
    """Per channel within 1% of the best factor of the whole grid, on conv, depthwise and linear shapes (short
    rows and few bits make the error curve ripple, which is where a coarse-to-fine search can go wrong). From
    8 bits up the factors left after ruling out those that cannot win are all tried, so the result is exact."""
    g = torch.Generator().manual_seed(bits)
    torch.manual_seed(bits)
    spec = weight_spec(bits)
    tolerance = 1e-5 if bits >= 8 else 0.01
    for shape in ((64, 32, 3, 3), (96, 1, 3, 3), (32, 3, 7, 7), (48, 768)):
        w = _weights(kind, shape, g)
        rows = w.reshape(shape[0], -1)
        scale, zp = static_qparams(w, spec)
        qmin, qmax = qmath.qrange(spec.bits, spec.symmetric)
        found = qmath.quantization_error(rows, scale.view(-1, 1), zp.view(-1, 1), qmin, qmax, (1,))
        best = _exhaustive_errors(rows, spec)
        assert torch.all(found <= (1 + tolerance) * best + 1e-12), (shape, (found / best).max())
        assert found.sum() <= (1 + tolerance / 10) * best.sum(), shape


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_activation_mse_search_is_as_good_as_the_exhaustive_grid(bits):
    """Per tensor and affine, on a sample that need not hold the extremes the grid is scaled from."""
    g = torch.Generator().manual_seed(0)
    obs = ActivationObserver(QuantSpec(bits=bits, observer="mse"))
    for _ in range(3):
        obs.observe(torch.randn(300_000, generator=g) ** 3)
    scale, zp = obs.qparams()
    sample = torch.cat(obs.samples).view(1, -1)
    found = _err(sample, obs.spec, scale, zp)
    assert found <= 1.01 * _exhaustive_errors(sample, obs.spec, obs.lo.view(1), obs.hi.view(1))[0]


def _count_evaluated_grids(monkeypatch):
    evaluated = []
    real = qmath.grid_errors

    def counting(rows, scale, *args, **kwargs):
        evaluated.append(scale.shape[0])
        return real(rows, scale, *args, **kwargs)

    monkeypatch.setattr(qmath, "grid_errors", counting)
    return evaluated


def test_mse_search_evaluates_under_half_the_grid(monkeypatch):
    """The point of the coarse-to-fine search: far fewer candidate grids than the exhaustive one."""
    evaluated = _count_evaluated_grids(monkeypatch)
    static_qparams(torch.randn(16, 256), weight_spec(4))
    assert 0 < sum(evaluated) < len(MSE_GRID) / 2


def test_fine_grids_rule_out_shrunken_ranges_without_trying_them(monkeypatch):
    """At 16 bits no shrunken range can beat the full one on ordinary weights; at 8 bits only mild shrinking can."""
    evaluated = _count_evaluated_grids(monkeypatch)
    w = torch.randn(64, 576, generator=torch.Generator().manual_seed(0)) ** 3
    static_qparams(w, weight_spec(16))
    assert sum(evaluated) == 1
    evaluated.clear()
    static_qparams(w, weight_spec(8))
    assert sum(evaluated) <= 20


def _depthwise_with_strong_centre_taps() -> torch.nn.Conv2d:
    """3x3 depthwise filters like a trained network's: one large centre tap among small ones."""
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    with torch.no_grad():
        conv.weight.copy_(0.1 * torch.randn(16, 1, 3, 3, generator=gen))
        conv.weight[:, 0, 1, 1] = 1.0 + 0.2 * torch.rand(16, generator=gen)
    return conv


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    """Neighbouring pixels strongly correlated, as in feature maps."""
    x = torch.randn(n, 16, 20, 20, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2) * 3


def test_output_ranges_change_unseen_outputs_less_than_weight_mse_ranges():
    """On short rows with one dominant weight, the least weight error clips that weight; the output observer
    weighs each weight's error by the inputs it multiplies, and wins on images it was not calibrated on."""
    conv = _depthwise_with_strong_centre_taps()
    errors = {}
    for observer in ("mse", "output"):
        q = lowbit.quantize(torch.nn.Sequential(conv), _smooth_images(32, 0), weights_bits=4, activation_bits=None,
                            weights_observer=observer, bias_correction=False, gain_correction=False)
        fresh = _smooth_images(32, 1)
        with torch.no_grad():
            errors[observer] = (q(fresh) - conv(fresh)).square().mean().item()
    assert errors["output"] < 0.8 * errors["mse"]


def test_output_observer_without_data_searches_like_mse():
    w = _depthwise_with_strong_centre_taps().weight.detach()
    for got, want in zip(static_qparams(w, weight_spec(4, "output")), static_qparams(w, weight_spec(4, "mse"))):
        assert torch.equal(got, want)

