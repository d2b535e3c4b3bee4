import pytest

from lowbit import LowbitError, Override, QuantConfig, QuantSpec
from lowbit.config import FIRST_LAYER, LAST_LAYER


@pytest.mark.parametrize("bits", [1, 17, 0, "int4", 3.5, True, "²", "٤"])
def test_bad_bits_raise_clear_error(bits):
    with pytest.raises(LowbitError, match="2 to 16"):
        QuantSpec(bits=bits)


def test_fp16_and_numeric_strings_are_accepted():
    assert QuantSpec(bits="fp16").is_fp16
    assert QuantSpec(bits="4").bits == 4


def test_dynamic_per_channel_is_rejected():
    with pytest.raises(LowbitError, match="per-tensor"):
        QuantSpec(dynamic=True, granularity="per_channel")


def test_unknown_observer_is_rejected():
    with pytest.raises(LowbitError, match="observer"):
        QuantSpec(observer="kl")


def test_from_bits_defaults():
    cfg = QuantConfig.from_bits(4, 8)
    assert cfg.weights.granularity == "per_channel" and cfg.weights.observer == "output"
    assert cfg.activations.granularity == "per_tensor" and cfg.activations.observer == "minmax"
    assert QuantConfig.from_bits(8, None).activations is None


def test_config_round_trips_through_json():
    cfg = QuantConfig.from_bits(3, 4, first_last_bits=8, method="nearest", seed=3,
                                overrides=(Override("layer1.*", weights=QuantSpec(bits=6)),))
    assert QuantConfig.from_json(cfg.to_json()) == cfg


def test_overrides_first_match_wins_and_first_last_resolve():
    cfg = QuantConfig.from_bits(4, 4, first_last_bits=8).resolve("conv1", "fc")
    assert cfg.weight_spec_for("conv1").bits == 8
    assert cfg.weight_spec_for("fc").bits == 8
    assert cfg.weight_spec_for("layer1.0.conv1").bits == 4
    assert cfg.activation_spec_for("x", "conv1").bits == 8
    assert all(o.pattern not in (FIRST_LAYER, LAST_LAYER) for o in cfg.overrides)


def test_malformed_config_dict_raises():
    with pytest.raises(LowbitError, match="malformed"):
        QuantConfig.from_dict({"activations": None})
