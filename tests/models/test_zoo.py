import pytest
import torch

import lowbit
from lowbit import LowbitError
from lowbit.analysis import per_layer_sqnr
from lowbit.models import MODEL_NAMES, build_model, rebuild

SMALL_INPUT = {"resnet20": (1, 28, 28), "mobilenet_v2_small": (1, 28, 28), "vit_small": (1, 28, 28),
               "resnet18": (3, 64, 64), "resnet50": (3, 64, 64), "mobilenet_v2": (3, 64, 64),
               "regnetx_006": (3, 64, 64), "efficientnet_lite0": (3, 64, 64), "deit_base_patch16_224": (3, 32, 32),
               "mixer_b16_224": (3, 32, 32)}


def _build(name):
    shape = SMALL_INPUT[name]
    kwargs = {"num_classes": 10, "in_channels": shape[0]}
    if name in ("deit_base_patch16_224", "mixer_b16_224", "vit_small", "efficientnet_lite0"):
        kwargs["image_size"] = shape[1]
    torch.manual_seed(0)
    if name in LARGE:
        model = _quickly_initialized(name, kwargs)
    else:
        model = build_model(name, **kwargs)
    x = torch.randn(8, *shape)
    return recalibrate_batchnorm(model, x), x


LARGE = ("deit_base_patch16_224", "mixer_b16_224")  # ~60-90M parameters: timm's own initialization takes seconds


def _quickly_initialized(name, kwargs):
    """The architecture built on the meta device, then given plain random weights: what is tested is the
    structure, not timm's initialization scheme."""
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
            else:  # norm scales at 1, biases at 0
                p.fill_(1.0 if pname.endswith("weight") else 0.0)
        for b in model.buffers():
            b.zero_()
    return model


def recalibrate_batchnorm(model, x):
    """Random weights leave activations vanishing or exploding; fitting BN statistics makes them realistic."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():  # zero-initialized heads (timm's Mixer) would make every output 0
                p.normal_(0, 0.02)
        for name, p in model.named_parameters():
            if "cls_token" in name or "pos_embed" in name:  # at init ~50x smaller than patch tokens; not when trained
                p.normal_(0, 0.5)
        model.train()
        model(x)
    return model.eval()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_zoo_model_quantizes_end_to_end(name):
    """Random weights amplify any perturbation with depth, so 8 bits is checked layer by layer (weights at
    ~6 dB per bit, the first layers' outputs), and the whole network end to end at 16 bits."""
    model, x = _build(name)
    with torch.no_grad():
        ref = model(x)
    q8 = lowbit.quantize(model, x, weights_bits=8, activation_bits=8)
    assert q8.lowbit_info.mode == "fx"  # every zoo architecture traces
    reports = per_layer_sqnr(model, q8, x)
    assert min(r.weight_sqnr for r in reports) > 38, name
    assert all(r.output_sqnr > 25 for r in reports[:3]), [(r.name, r.output_sqnr) for r in reports[:3]]
    with torch.no_grad():
        out = q8(x)
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    q16 = lowbit.quantize(model, x, weights_bits=16, activation_bits=16)
    with torch.no_grad():
        assert (q16(x) - ref).norm() / ref.norm() < 0.02, name
    if name in ("resnet20", "mobilenet_v2_small", "vit_small"):  # shallow enough for an end-to-end 8-bit check
        assert (out - ref).norm() / ref.norm() < 0.1, name


def test_unknown_model_lists_known_names():
    with pytest.raises(LowbitError, match="resnet20"):
        build_model("resnet1000")


def test_architecture_record_rebuilds_the_same_structure():
    model = build_model("resnet20", num_classes=10, in_channels=1)
    again = rebuild(model.lowbit_arch)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in again.state_dict().items()}


def test_single_channel_inputs_for_imagenet_architectures():
    model = build_model("resnet18", num_classes=10, in_channels=1)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)


def test_small_nets_are_small_and_traceable():
    for name, (lo, hi) in {"mobilenet_v2_small": (100_000, 450_000), "vit_small": (150_000, 450_000)}.items():
        model, _ = _build(name)
        n = sum(p.numel() for p in model.parameters())
        assert lo < n < hi, (name, n)
        torch.fx.symbolic_trace(model)


def test_the_seeds_model_names_are_aliases_of_the_zoo_entries():
    from lowbit.models import build_model
    from lowbit.models.registry import architecture

    assert architecture("mbv2").name == "mobilenet_v2"
    assert architecture("deit").name == "deit_base_patch16_224"
    assert architecture("mlp_mixer").name == "mixer_b16_224"
    assert build_model("mbv2", num_classes=10).lowbit_arch["name"] == "mobilenet_v2"
