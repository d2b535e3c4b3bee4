"""Small Fashion-MNIST-sized reference networks: a MobileNet-V2-style CNN and a ViT."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.registry import register


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_skip = stride == 1 and cin == cout
        self.conv = nn.Sequential(conv_bn_act(cin, hidden, 1), conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
                                  conv_bn_act(hidden, cout, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_skip else self.conv(x)


class MobileNetV2Small(nn.Module):
    """MobileNet-V2 layout scaled to 28x28 inputs (about 0.3M parameters)."""

    # (expansion, channels, blocks, stride)
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(in_channels, 16, 3)]
        cin = 16
        for expand, cout, n, stride in self.STAGES:
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(conv_bn_act(cin, 256, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTSmall(nn.Module):
    """A pre-norm vision transformer with a class token (4x4 patches of a 28x28 image: 49 tokens)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch_size: int = 4,
                 dim: int = 96, depth: int = 4, heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        tokens = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def mobilenet_v2_small(num_classes: int = 10, in_channels: int = 1) -> MobileNetV2Small:
    return MobileNetV2Small(num_classes, in_channels)


def vit_small(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> ViTSmall:
    return ViTSmall(num_classes, in_channels, image_size)


@register("mobilenet_v2_small", "MobileNet-V2-style net for 28x28 inputs (bundled Fashion-MNIST weights)",
          input_shape=(1, 28, 28))
def _build_mobilenet(num_classes: int, in_channels: int, image_size: int | None, pretrained: bool) -> nn.Module:
    return mobilenet_v2_small(num_classes, in_channels)


@register("vit_small", "small pre-norm ViT, 4x4 patches (bundled Fashion-MNIST weights)", input_shape=(1, 28, 28),
          sized=True)
def _build_vit(num_classes: int, in_channels: int, image_size: int | None, pretrained: bool) -> nn.Module:
    return vit_small(num_classes, in_channels, image_size or 28)

