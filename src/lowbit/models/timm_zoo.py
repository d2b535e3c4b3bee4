"""timm's RegNetX-600MF, DeiT-B and MLP-Mixer-B/16 (pretrained weights through timm's own download)."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from lowbit.models.registry import ARCHITECTURES, register


def _timm(timm_name: str, sized: bool, num_classes: int, in_channels: int, image_size: int | None,
          pretrained: bool) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_channels}
    if sized and image_size:
        kwargs["img_size"] = image_size
    return timm.create_model(timm_name, pretrained=pretrained, **kwargs)


for _name, _description, _sized in (("regnetx_006", "timm RegNetX-600MF", False),
                                    ("deit_base_patch16_224", "timm DeiT-B/16", True),
                                    ("mixer_b16_224", "timm MLP-Mixer-B/16", True)):
    register(_name, _description, sized=_sized, pretrained="timm download", timm_name=_name)(
        partial(_timm, _name, _sized))

# the names EPTQ's and BRECQ's scripts use for these models
ARCHITECTURES.alias("deit", "deit_base_patch16_224")
ARCHITECTURES.alias("mlp_mixer", "mixer_b16_224")
ARCHITECTURES.alias("regnetx_600m", "regnetx_006")
