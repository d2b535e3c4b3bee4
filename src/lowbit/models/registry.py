"""The architecture registry: every model lowbit knows by name, registered next to its code.

An entry says how to build the architecture and what the rest of lowbit needs to know about it (the input it
usually runs at, the normalization its pretrained weights expect, whether its layers depend on the image size,
whether pretrained weights exist), so that no caller has to recognise a model by its name. CLI choices and help
come from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from torch import nn

from lowbit.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from lowbit.registry import Registry


class Builder(Protocol):
    def __call__(self, num_classes: int, in_channels: int, image_size: int | None, pretrained: bool) -> nn.Module: ...


@dataclass(frozen=True)
class Architecture:
    """A registered architecture and what lowbit needs to know about it."""

    name: str
    build: Builder
    description: str
    input_shape: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    sized: bool = False  # layers depend on the image size (position embeddings, static padding)
    pretrained: str | None = None  # where pretrained weights come from, if anywhere
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    timm_name: str | None = None  # a timm model: its preprocessing is read from timm's pretrained config

    @property
    def preprocessing(self) -> Preprocessing:
        """How image-folder photos are prepared for this model (its pretrained weights' own preprocessing)."""
        if self.timm_name is not None:
            from timm.models import get_pretrained_cfg  # metadata shipped with timm: nothing is downloaded

            cfg = get_pretrained_cfg(self.timm_name)
            if cfg is not None:
                return Preprocessing(tuple(cfg.mean), tuple(cfg.std), cfg.interpolation, cfg.crop_pct)
        return Preprocessing(self.mean, self.std, self.interpolation, self.crop_pct)


ARCHITECTURES: Registry[Architecture] = Registry("model")


def register(name: str, description: str, **facts) -> Callable[[Builder], Builder]:
    """Decorator adding a builder ``(num_classes, in_channels, image_size, pretrained) -> nn.Module``."""
    def add(build: Builder) -> Builder:
        ARCHITECTURES.add(name, Architecture(name, build, description, **facts))
        return build
    return add


def architecture(name: str) -> Architecture:
    """The registered architecture ``name``, or a one-line error listing them."""
    return ARCHITECTURES.get(name)


def replace_conv_input(model: nn.Module, attr: str, in_channels: int) -> None:
    """Swap the conv at ``attr`` for one with ``in_channels`` inputs (keeping its other hyper-parameters)."""
    parent, _, name = attr.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old: nn.Conv2d = getattr(owner, name)
    setattr(owner, name, nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                   old.dilation, old.groups, old.bias is not None))


def replace_linear_output(model: nn.Module, attr: str, num_classes: int) -> None:
    """Swap the linear layer at ``attr`` for a fresh one with ``num_classes`` outputs."""
    parent, _, name = attr.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    setattr(owner, name, nn.Linear(getattr(owner, name).in_features, num_classes))
