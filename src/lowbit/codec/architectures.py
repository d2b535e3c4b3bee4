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
from lowbit.errors import LowbitError
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


def _compressai(model: str) -> Builder:
    """A builder for CompressAI's model class ``model`` (transform channels N, latent channels M)."""
    def build(n: int, m: int) -> nn.Module:
        return getattr(compressai_module("models"), model)(N=n, M=m)
    return build


def _single_width(model: str) -> Builder:
    """A builder for CompressAI's Cheng et al. 2020 models, whose latents have as many channels as their
    transforms (one count, N)."""
    def build(n: int, m: int) -> nn.Module:
        if n != m:
            raise LowbitError(f"{model} has one channel count: give N and M equal (got N={n}, M={m})")
        return getattr(compressai_module("models"), model)(N=n)
    return build


SMALL = "at 64 channels: trains on one CPU core, small files"
register("bmshj2018-factorized", "Balle et al. 2018 factorized prior (GDN transforms, one entropy bottleneck)",
         stride=16, channels=(128, 192))(_compressai("FactorizedPrior"))
register("bmshj2018-factorized-small", f"the factorized prior {SMALL}", stride=16,
         channels=(64, 64))(_compressai("FactorizedPrior"))
register("bmshj2018-hyperprior", "Balle et al. 2018 scale hyperprior (Gaussian latents with side information)",
         stride=64, channels=(128, 192))(_compressai("ScaleHyperprior"))
register("bmshj2018-hyperprior-small", f"the scale hyperprior {SMALL}", stride=64,
         channels=(64, 64))(_compressai("ScaleHyperprior"))
register("mbt2018-mean", "Minnen et al. 2018 mean-scale hyperprior (the side information predicts each latent's "
         "mean and scale)", stride=64, channels=(128, 192))(_compressai("MeanScaleHyperprior"))
register("mbt2018-mean-small", f"the mean-scale hyperprior {SMALL}", stride=64,
         channels=(64, 64))(_compressai("MeanScaleHyperprior"))
register("mbt2018", "Minnen et al. 2018 joint autoregressive and hierarchical priors (a masked context model over "
         "the decoded latents; coded one position at a time)", stride=64,
         channels=(192, 192))(_compressai("JointAutoregressiveHierarchicalPriors"))
register("mbt2018-small", f"the joint autoregressive codec {SMALL}", stride=64,
         channels=(64, 64))(_compressai("JointAutoregressiveHierarchicalPriors"))
register("cheng2020-anchor", "Cheng et al. 2020 anchor (residual transforms, sub-pixel upsampling, the joint "
         "autoregressive entropy model)", stride=64, channels=(128, 128))(_single_width("Cheng2020Anchor"))
register("cheng2020-attn", "Cheng et al. 2020 with attention modules in its transforms",
         stride=64, channels=(128, 128))(_single_width("Cheng2020Attention"))
register("cheng2020-anchor-checkerboard", "Cheng et al. 2020 anchor with a checkerboard context model (He et al. "
         "2021: two passes instead of one per position)", stride=64,
         channels=(128, 128))(_single_width("Cheng2020AnchorCheckerboard"))
