import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lowbit import LowbitError
from lowbit.models import build_model, load_checkpoint


def _resnet20():
    return build_model("resnet20", num_classes=10, in_channels=1)


def test_safetensors_and_torch_state_dicts_load(tmp_path):
    src = _resnet20()
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(sd, str(tmp_path / "a.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "b.pt")
    for f in ("a.safetensors", "b.pt"):
        dst = load_checkpoint(_resnet20(), tmp_path / f)
        assert all(torch.equal(dst.state_dict()[k], v) for k, v in sd.items())


def test_missing_file(tmp_path):
    with pytest.raises(LowbitError, match="not found"):
        load_checkpoint(_resnet20(), tmp_path / "none.pt")


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in _resnet20().state_dict().items()}, str(path))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(LowbitError, match="corrupt or truncated"):
        load_checkpoint(_resnet20(), path)


def test_garbage_torch_file(tmp_path):
    path = tmp_path / "g.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(LowbitError, match="corrupt or truncated"):
        load_checkpoint(_resnet20(), path)


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"model": nn.Linear(2, 2)}, path)
    with pytest.raises(LowbitError, match="contains code"):
        load_checkpoint(_resnet20(), path)


def test_other_architecture_names_keys_and_fix(tmp_path):
    path = tmp_path / "other.safetensors"
    other = build_model("mobilenet_v2_small", num_classes=10, in_channels=1)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(LowbitError, match="does not match architecture resnet20.*missing keys.*--model"):
        load_checkpoint(_resnet20(), path)


def test_shape_mismatch_is_reported(tmp_path):
    path = tmp_path / "c.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("resnet20", num_classes=7, in_channels=1).state_dict().items()},
              str(path))
    with pytest.raises(LowbitError, match="shape mismatch at fc.weight"):
        load_checkpoint(_resnet20(), path)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("content,message", [
    (lambda p: torch.save({"w": _RunsCode()}, p), "contains code"),
    (lambda p: p.write_text("hello world\n"), "not a checkpoint"),
])
def test_unreadable_or_unsafe_checkpoints_are_named(tmp_path, capsys, content, message):
    path = tmp_path / "c.pt"
    content(path)
    with pytest.raises(LowbitError, match=message) as info:
        load_checkpoint(_resnet20(), path)
    assert "weights_only" not in str(info.value) and "this ran" not in capsys.readouterr().out


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd["conv1.weight"].view(-1).__setitem__(0, float("nan")), "NaN or infinite"),
    (lambda sd: sd["fc.bias"].fill_(float("inf")), "NaN or infinite"),
    (lambda sd: sd.__setitem__("fc.weight", sd["fc.weight"].long()), "torch.int64"),
])
def test_checkpoints_that_would_quantize_into_garbage_are_refused(tmp_path, edit, message):
    sd = {k: v.clone() for k, v in _resnet20().state_dict().items()}
    edit(sd)
    torch.save(sd, tmp_path / "c.pt")
    with pytest.raises(LowbitError, match=message):
        load_checkpoint(_resnet20(), tmp_path / "c.pt")


def test_brecqs_mobilenet_v2_checkpoint_loads_into_the_zoo_model(tmp_path):
    """BRECQ's MobileNet-V2 keeps each block's layers in one flat Sequential: the same leaf modules, in forward
    order, as torchvision's nested block. A checkpoint written with those flat names loads and computes the same."""
    import torch
    from safetensors.torch import save_file

    from lowbit.models import build_model, load_checkpoint

    torch.manual_seed(0)
    source = build_model("mobilenet_v2", num_classes=10)
    flat = {}
    for name, module in source.named_modules():
        if name.count(".") == 2 and name.endswith(".conv"):  # features.<i>.conv of an inverted-residual block
            leaves = [m for m in module.modules() if not list(m.children())]
            for index, leaf in enumerate(leaves):
                for key, value in leaf.state_dict().items():
                    flat[f"{name}.{index}.{key}"] = value
    assert "features.1.conv.3.weight" in flat and "features.2.conv.7.running_var" in flat
    flat.update({k: v for k, v in source.state_dict().items() if ".conv." not in k})
    save_file({k: v.contiguous() for k, v in flat.items()}, str(tmp_path / "brecq_mbv2.safetensors"))
    target = load_checkpoint(build_model("mbv2", num_classes=10), tmp_path / "brecq_mbv2.safetensors")
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(target.eval()(x), source.eval()(x))
