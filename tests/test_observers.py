import torch

from lowbit import qmath
from lowbit.observers import ActivationObserver, static_qparams
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
    obs.observe(torch.tensor([0.0, 1.0]))
    obs.observe(torch.tensor([-2.0, 0.5]))
    scale, zp = obs.qparams()
    assert torch.isclose(scale, torch.tensor(3.0 / 255))


def test_activation_observer_sample_is_bounded():
    obs = ActivationObserver(QuantSpec(bits=4, observer="mse"))
    for _ in range(40):
        obs.observe(torch.randn(100_000))
    assert obs.n_sampled <= 1 << 20
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
