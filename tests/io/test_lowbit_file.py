import os

import pytest
import torch
from safetensors import safe_open

import lowbit
from conftest import ResidualNet, TinyViT
from lowbit import LowbitError
from lowbit.io.lowbit_file import read_metadata


def _roundtrip(model, data, tmp_path, **kw):
    q = lowbit.quantize(model, data, **kw)
    path = lowbit.save(q, tmp_path / "m.lowbit")
    return q, lowbit.load(path, model=type(model)()), path


@pytest.mark.parametrize("wbits,abits", [(2, 4), (3, 8), (4, 8), (8, 8), (12, 16), (16, 16), ("fp16", "fp16"), (4, None)])
def test_reload_gives_identical_outputs(residual_net, images, tmp_path, wbits, abits):
    q, r, _ = _roundtrip(residual_net, images, tmp_path, weights_bits=wbits, activation_bits=abits)
    with torch.no_grad():
        assert torch.equal(q(images), r(images))


def test_reload_vit_and_dynamic_activations(tiny_vit, tmp_path):
    x = torch.randn(8, 1, 16, 16)
    q, r, _ = _roundtrip(tiny_vit, x, tmp_path, weights_bits=8, activation_bits=16, dynamic_activations=True)
    with torch.no_grad():
        assert torch.equal(q(x), r(x))


def test_a_float_residual_stream_reloads_as_saved(tiny_vit, tmp_path):
    """The header keeps the placement choice, so the file's activation grids meet the same quantizers again."""
    x = torch.randn(8, 1, 16, 16)
    q, r, _ = _roundtrip(tiny_vit, x, tmp_path, weights_bits=4, activation_bits=4, float_residual_stream=True)
    assert r.lowbit_info.config.float_residual_stream
    with torch.no_grad():
        assert torch.equal(q(x), r(x))


class BiasFree(torch.nn.Module):
    """Layers without biases and no batch-norm to fold into them: bias correction gives them biases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, bias=False)
        self.fc = torch.nn.Linear(8, 5, bias=False)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_biases_added_by_bias_correction_reload(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    q, r, _ = _roundtrip(BiasFree().eval(), x, tmp_path, weights_bits=4, activation_bits=8)
    assert q.conv.bias is not None and q.fc.bias is not None
    with torch.no_grad():
        assert torch.equal(q(x), r(x))


def test_symmetric_weights_store_no_zero_points(residual_net, images, tmp_path):
    q, r, path = _roundtrip(residual_net, images, tmp_path, weights_bits=4, activation_bits=8, symmetric_weights=True)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        assert not any(k.endswith("zero_point") and not k.startswith("activations.") for k in f.keys())
    with torch.no_grad():
        assert torch.equal(q(images), r(images))


def test_metadata_records_config_and_bits(residual_net, images, tmp_path):
    _, _, path = _roundtrip(residual_net, images, tmp_path, weights_bits=3, activation_bits=8)
    meta = read_metadata(path)
    assert meta["config"]["weights"]["bits"] == 3 and set(meta["bits"].values()) == {3}
    assert meta["lowbit_version"] == lowbit.__version__


def test_truncated_file_is_a_clear_error(residual_net, images, tmp_path):
    _, _, path = _roundtrip(residual_net, images, tmp_path, weights_bits=4, activation_bits=8)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LowbitError, match="truncated"):
        lowbit.load(path, model=ResidualNet())


def test_file_from_another_architecture_is_a_clear_error(residual_net, images, tmp_path):
    _, _, path = _roundtrip(residual_net, images, tmp_path, weights_bits=4, activation_bits=8)
    with pytest.raises(LowbitError, match="does not match this architecture"):
        lowbit.load(path, model=TinyViT())


def test_custom_architecture_needs_model(residual_net, images, tmp_path):
    _, _, path = _roundtrip(residual_net, images, tmp_path, weights_bits=4, activation_bits=8)
    with pytest.raises(LowbitError, match="pass model="):
        lowbit.load(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(LowbitError, match="not found"):
        lowbit.load(tmp_path / "nope.lowbit")


def test_failed_save_leaves_no_partial_file(residual_net, images, tmp_path, monkeypatch):
    q = lowbit.quantize(residual_net, images, weights_bits=4, activation_bits=8)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("lowbit.io.lowbit_file.save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        lowbit.save(q, tmp_path / "m.lowbit")
    assert os.listdir(tmp_path) == []


def test_saving_an_unquantized_model_is_a_clear_error(residual_net, tmp_path):
    with pytest.raises(LowbitError, match="quantize it first"):
        lowbit.save(residual_net, tmp_path / "m.lowbit")


@pytest.mark.filterwarnings("ignore:torch.fx could not trace")
def test_a_buffer_the_architecture_cannot_take_is_a_one_line_error(tmp_path):
    import torch
    from torch import nn

    import lowbit
    from lowbit.errors import LowbitError

    class WithTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("table", torch.empty(0))  # filled later, like a codec's entropy tables

        def forward(self, x):
            if bool(x.isfinite().all()):  # data-dependent control flow: prepared by swapping, buffers kept
                return self.conv(x) + self.table.sum()
            return x

    model = WithTable()
    model.table = torch.arange(3.0)
    qmodel = lowbit.quantize(model, torch.randn(4, 3, 8, 8), weights_bits=8, activation_bits=None)
    path = lowbit.save(qmodel, tmp_path / "t.lowbit")
    with pytest.raises(LowbitError, match="t.lowbit: .*size"):
        lowbit.load(str(path), model=WithTable())


def test_float_weights_exact_in_float16_are_stored_in_half_the_bytes(residual_net, images, tmp_path):
    """A layer kept float whose weights came from a float16 file is stored as float16 and reloads bit-exactly;
    float32 values that float16 would round stay float32."""
    with torch.no_grad():
        residual_net.head.weight.copy_(residual_net.head.weight.half().float())
    q = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=8,
                        overrides=(lowbit.Override("head", keep_float=True),))
    path = lowbit.save(q, tmp_path / "m.lowbit")
    with safe_open(str(path), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes["head.weight"] == "F16" and dtypes["head.bias"] == "F32"
    r = lowbit.load(path, model=ResidualNet())
    assert r.head.weight.dtype == torch.float32 and torch.equal(r.head.weight, q.head.weight)
    with torch.no_grad():
        assert torch.equal(r(images), q(images))


def test_weight_scales_are_stored_in_float16_and_float32_ones_still_load(residual_net, images, tmp_path):
    """Freezing makes weight scales float16 numbers, which the file stores in two bytes; a scale that is not
    one (a file from before, or a grid set by hand) is stored and reloaded as float32."""
    q = lowbit.quantize(residual_net, images, weights_bits=4, activation_bits=8)
    path = lowbit.save(q, tmp_path / "m.lowbit")
    with safe_open(str(path), "pt") as f:
        scales = {f.get_slice(f"{name}.scale").get_dtype() for name, _ in lowbit.layers.quant_layers(q)}
    assert scales == {"F16"}
    name, layer = next(iter(lowbit.layers.quant_layers(q)))
    wq = layer.weight_quant
    wq.set_qparams(wq.scale * (1 + 2.0**-20), wq.zero_point)
    path = lowbit.save(q, tmp_path / "f32.lowbit")
    with safe_open(str(path), "pt") as f:
        assert f.get_slice(f"{name}.scale").get_dtype() == "F32"
    r = lowbit.load(path, model=ResidualNet())
    assert torch.equal(dict(r.named_modules())[name].weight_quant.scale, wq.scale)
