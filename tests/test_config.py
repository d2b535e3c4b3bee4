import pytest

from lowbit.config import QuantConfig
from lowbit.errors import LowbitError


def test_default_specs_follow_the_width():
    cfg = QuantConfig.from_bits(8, 8)
    assert cfg.weights.observer == "mse" and cfg.weights_at(4).observer == "output"
    assert cfg.weights_at(4).symmetric and not cfg.weights_at(2).symmetric
    assert cfg.activations_at(4).observer == "mse" and cfg.activations_at(8).observer == "minmax"


def test_explicit_choices_are_kept_at_every_width():
    cfg = QuantConfig.from_bits(8, 8, weights_observer="minmax", activation_observer="percentile",
                                symmetric_weights=False)
    for bits in (2, 4, 8):
        w = cfg.weights_at(bits)
        assert (w.bits, w.observer, w.symmetric) == (bits, "minmax", False)
        a = cfg.activations_at(bits)
        assert (a.bits, a.observer) == (bits, "percentile")


def test_weights_only_config_has_no_activation_spec():
    assert QuantConfig.from_bits(4, None).activations_at(8) is None


def test_activation_ranges_cannot_use_the_weights_only_output_observer():
    with pytest.raises(LowbitError, match="activation observer"):
        QuantConfig.from_bits(4, 4, activation_observer="output")


def test_residual_bits_need_quantized_activations():
    with pytest.raises(LowbitError, match="residual_bits"):
        QuantConfig.from_bits(4, None, residual_bits=8)
