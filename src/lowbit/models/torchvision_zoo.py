"""torchvision's ResNet-18/50 and MobileNet-V2 (pretrained weights through torchvision's own download)."""

from __future__ import annotations

from functools import partial

from torch import nn

from lowbit.models.registry import ARCHITECTURES, Builder, register, replace_conv_input, replace_linear_output


def _torchvision(factory_name: str, stem: str, head: str, num_classes: int, in_channels: int,
                 image_size: int | None, pretrained: bool) -> nn.Module:
    import torchvision

    factory = getattr(torchvision.models, factory_name)
    if pretrained:
        model = factory(weights="DEFAULT")
        if num_classes != 1000:  # a head of another size is re-initialized after loading
            replace_linear_output(model, head, num_classes)
    else:
        model = factory(weights=None, num_classes=num_classes)
    if in_channels != 3:
        replace_conv_input(model, stem, in_channels)
    return model


def _add(name: str, description: str, stem: str, head: str) -> None:
    build: Builder = partial(_torchvision, name, stem, head)
    register(name, description, pretrained="torchvision download")(build)


_add("resnet18", "torchvision ResNet-18", "conv1", "fc")
_add("resnet50", "torchvision ResNet-50", "conv1", "fc")
_add("mobilenet_v2", "torchvision MobileNet-V2", "features.0.0", "classifier.1")
ARCHITECTURES.alias("mbv2", "mobilenet_v2")  # EPTQ's name
ARCHITECTURES.alias("mobilenetv2", "mobilenet_v2")  # BRECQ's
