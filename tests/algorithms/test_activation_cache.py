"""Cached block inputs on CPU memory or memory-mapped files give the same optimized model."""

import pytest
import torch

import lowbit
from conftest import ResidualNet, randomize_bn
from lowbit.algorithms import activation_cache
from lowbit.algorithms.activation_cache import ActivationCache
from lowbit.layers import quant_layers


def test_disk_cache_maps_files_that_vanish_from_the_folder(tmp_path):
    cache = ActivationCache.choose("disk", torch.device("cpu"), 0, directory=str(tmp_path))
    x = torch.randn(6, 3, 4, 4)
    y = cache.copy(x)
    y[0] += 1
    assert torch.equal(y[1:], x[1:]) and torch.equal(y[0], x[0] + 1)
    assert not list(tmp_path.iterdir())  # unlinked once mapped: nothing left behind


def test_auto_falls_back_to_disk_when_memory_is_short(monkeypatch):
    monkeypatch.setattr(activation_cache, "available_ram", lambda: 10_000)
    assert ActivationCache.choose("auto", torch.device("cpu"), 1_000).kind == "cpu"
    assert ActivationCache.choose("auto", torch.device("cpu"), 100_000).kind == "disk"


@pytest.mark.parametrize("method", ["brecq", "adaround"])
def test_memory_mapped_cache_gives_identical_integer_weights(method, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    torch.manual_seed(0)
    model = randomize_bn(ResidualNet())
    calib = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    runs = [lowbit.quantize(model, calib, weights_bits=3, activation_bits=4, method=method, iters=20, cache=where)
            for where in ("cpu", "disk")]
    for (_, a), (_, b) in zip(quant_layers(runs[0]), quant_layers(runs[1])):
        assert torch.equal(a.qweight, b.qweight)


def test_unknown_cache_setting_is_a_clear_error():
    with pytest.raises(lowbit.LowbitError, match="cache must be one of"):
        lowbit.quantize(ResidualNet(), torch.randn(8, 3, 16, 16), method="brecq", cache="ssd")
