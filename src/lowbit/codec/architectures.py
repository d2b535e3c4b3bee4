"""The codec architecture registry: learned image codecs lowbit knows by name, built from CompressAI.

An entry says how to build the untrained network and the one fact the rest of lowbit needs about it: the
stride its input must be padded to (the product of its down-sampling steps), so that images of any size can be
coded. Weights never come from here; CompressAI's zoo downloads them, and lowbit works offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from lowbit.codec.compressai_modules import compressai_module
from lowbit.registry import Registry

Builder = Callable[[int, int], nn.Module]


@dataclass(frozen=True)
class CodecArchitecture:
    """A registered codec architecture: its builder ``(N, M) -> nn.Module`` and default channel counts."""

    name: str
    build: Builder
    description: str
    stride: int  # every input side must be a multiple of this (padded, then cropped after decoding)
    channels: tuple[int, int]  # default (N, M): transform width and latent channels

    def create(self, n: int | None = None, m: int | None = None) -> nn.Module:
        """A freshly initialised model, with the default channels unless ``n``/``m`` say otherwise."""
        return self.build(n or self.channels[0], m or self.channels[1])


CODEC_ARCHITECTURES: Registry[CodecArchitecture] = Registry("codec architecture")


def register(name: str, description: str, stride: int, channels: tuple[int, int]) -> Callable[[Builder], Builder]:
    """Decorator adding a builder ``(N, M) -> nn.Module`` with CompressAI's codec interface."""
    def add(build: Builder) -> Builder:
        CODEC_ARCHITECTURES.add(name, CodecArchitecture(name, build, description, stride, channels))
        return build
    return add


def codec_architecture(name: str) -> CodecArchitecture:
    """The registered codec architecture ``name``, or a one-line error listing them."""
    return CODEC_ARCHITECTURES.get(name)


@register("bmshj2018-factorized", "Balle et al. 2018 factorized prior (GDN transforms, one entropy bottleneck)",
          stride=16, channels=(128, 192))
def _factorized(n: int, m: int) -> nn.Module:
    return compressai_module("models").FactorizedPrior(N=n, M=m)


@register("bmshj2018-factorized-small", "the factorized prior at 64 channels: trains on one CPU core, small files",
          stride=16, channels=(64, 64))
def _factorized_small(n: int, m: int) -> nn.Module:
    return compressai_module("models").FactorizedPrior(N=n, M=m)


@register("bmshj2018-hyperprior", "Balle et al. 2018 scale hyperprior (Gaussian latents with side information)",
          stride=64, channels=(128, 192))
def _hyperprior(n: int, m: int) -> nn.Module:
    return compressai_module("models").ScaleHyperprior(N=n, M=m)


@register("bmshj2018-hyperprior-small", "the scale hyperprior at 64 channels: trains on one CPU core, small files",
          stride=64, channels=(64, 64))
def _hyperprior_small(n: int, m: int) -> nn.Module:
    return compressai_module("models").ScaleHyperprior(N=n, M=m)


def _mean_scale(n: int, m: int) -> nn.Module:
    return compressai_module("models").MeanScaleHyperprior(N=n, M=m)


register("mbt2018-mean", "Minnen et al. 2018 mean-scale hyperprior (the side information predicts each latent's "
         "mean and scale)", stride=64, channels=(128, 192))(_mean_scale)
register("mbt2018-mean-small", "the mean-scale hyperprior at 64 channels: trains on one CPU core, small files",
         stride=64, channels=(64, 64))(_mean_scale)
