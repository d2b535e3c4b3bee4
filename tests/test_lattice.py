import pytest
import torch

from lowbit import qmath
from lowbit.lattice import LatticeTracker
from lowbit.observers import ActivationObserver
from lowbit.spec import activation_spec


def _fake_quantize(x, scale, zero_point, bits=8, symmetric=False):
    return qmath.fake_quantize_no_grad(x, scale, zero_point, *qmath.qrange(bits, symmetric))


def _observer(*batches, observer="minmax", bits=8):
    obs = ActivationObserver(activation_spec(bits, observer))
    for b in batches:
        obs.observe(b)
    return obs


@pytest.mark.parametrize("observer", ["minmax", "mse", "percentile"])
def test_rounded_latents_are_represented_exactly_whatever_the_observer(observer):
    gen = torch.Generator().manual_seed(0)
    latents = [torch.round(torch.randn(4, 8, 16, 16, generator=gen) * 4) for _ in range(3)]
    scale, zp = _observer(*latents, observer=observer).qparams()
    for x in latents:
        assert torch.equal(_fake_quantize(x, scale, zp), x)


def test_values_beyond_the_calibrated_range_stay_exact_on_a_centred_grid():
    calib = torch.arange(-11.0, 12.0).repeat(50)
    scale, zp = _observer(calib).qparams()
    wider = torch.arange(-100.0, 101.0)
    assert torch.equal(_fake_quantize(wider, scale, zp), wider)


def test_eight_bit_pixels_keep_their_values_even_where_the_observer_would_clip():
    gen = torch.Generator().manual_seed(0)
    pixels = (torch.randn(2, 3, 32, 32, generator=gen) * 20 + 128).round().clamp(0, 255) / 255
    pixels[0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # rare extremes, which a percentile range clips
    scale, zp = _observer(pixels, observer="percentile").qparams()
    assert (_fake_quantize(pixels, scale, zp) - pixels).abs().max() < 1e-6


def test_continuous_activations_keep_their_range_grid():
    x = torch.randn(4, 8, 16, 16)
    lattice = _observer(x).lattice
    assert not lattice.possible and lattice.values is None
    assert _observer(x).qparams() == qmath.choose_qparams(x.min(), x.max(), 8, False)


def test_a_lattice_wider_than_the_grid_falls_back_to_the_range():
    x = torch.arange(-200.0, 201.0)  # 401 integers: more than 8 bits hold
    assert _observer(x).lattice.qparams() is None
    scale, _ = _observer(x).qparams()
    assert scale.item() == pytest.approx(400 / 255)


def test_a_lattice_that_misses_zero_is_not_used():
    x = torch.arange(0, 20).float() + 0.3  # evenly spaced, but zero is not a lattice point
    assert LatticeTracker(0, 255, False).step() is None
    tracker = LatticeTracker(0, 255, False)
    tracker.observe(x)
    assert tracker.step() is None


def test_batches_with_a_finer_lattice_refine_the_step():
    tracker = LatticeTracker(0, 255, False)
    tracker.observe(torch.arange(-4.0, 5.0) * 2)
    tracker.observe(torch.arange(-4.0, 5.0))
    assert tracker.step() == pytest.approx(1.0)


def test_symmetric_grid_needs_the_lattice_inside_its_signed_range():
    tracker = LatticeTracker(-128, 127, True)
    tracker.observe(torch.arange(-50.0, 51.0))
    scale, zp = tracker.qparams()
    assert scale.item() == 1.0 and zp.item() == 0
    tracker.observe(torch.tensor([200.0]))
    assert tracker.qparams() is None


def test_a_sparse_activation_is_ruled_out_without_sorting_the_whole_batch(monkeypatch):
    x = torch.relu(torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) - 2.3)  # about 1% non-zero
    sorted_sizes = []
    unique = torch.unique
    monkeypatch.setattr(torch, "unique", lambda t, *a, **k: sorted_sizes.append(t.numel()) or unique(t, *a, **k))
    tracker = LatticeTracker(0, 255, False)
    tracker.observe(x)
    assert not tracker.possible and max(sorted_sizes) < x.numel() // 8
