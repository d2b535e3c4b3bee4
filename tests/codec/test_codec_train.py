"""Training: the loss convention, reproducibility from the recipe, and weights that reload exactly."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from codec_helpers import ARCH, photo_like, tiny_codec

from lowbit.codec.train import (
    CodecTrainOptions,
    random_crops,
    rate_distortion_loss,
    train_codec,
)
from lowbit.codec.zoo import load_codec, save_codec, weights_digest
from lowbit.errors import LowbitError


def _images() -> list[torch.Tensor]:
    return [torch.from_numpy(photo_like(40, 56, seed)).permute(2, 0, 1).contiguous() for seed in range(2)] + [
        torch.from_numpy(photo_like(20, 24, 5)).permute(2, 0, 1).contiguous()]  # smaller than a crop


def test_loss_is_lambda_255_squared_mse_plus_bpp():
    x = torch.rand(2, 3, 8, 8)
    likelihood = torch.full((2, 4, 2, 2), 0.5)  # one bit per latent
    out = {"x_hat": x + 0.1, "likelihoods": {"y": likelihood}}
    loss, mse, bpp = rate_distortion_loss(out, x, 0.01)
    assert mse.item() == pytest.approx(0.01)
    assert bpp.item() == pytest.approx(likelihood.numel() / (2 * 8 * 8))
    assert loss.item() == pytest.approx(0.01 * 255**2 * 0.01 + bpp.item())


def test_crops_have_the_size_and_cover_small_images():
    crops = random_crops(_images(), 32, 16, random.Random(0))
    assert crops.shape == (16, 3, 32, 32) and 0 <= crops.min() and crops.max() <= 1


def test_same_seed_same_weights_and_training_changes_them():
    options = CodecTrainOptions(lmbda=0.01, steps=4, crop=32, batch_size=2)
    digests = []
    for _ in range(2):
        model = tiny_codec(seed=3)
        before = weights_digest(model)
        stats = train_codec(model, _images(), options, quiet=True)
        digests.append(weights_digest(model))
        assert digests[-1] != before
        assert math.isfinite(stats["train_psnr"]) and stats["train_bpp"] > 0
    assert digests[0] == digests[1]


@pytest.mark.parametrize("arch", [ARCH, "bmshj2018-hyperprior-small"])
def test_saved_half_weights_reload_to_the_same_model(tmp_path, arch):
    from lowbit.codec.architectures import codec_architecture

    torch.manual_seed(0)
    model = codec_architecture(arch).create(8, 8).eval()
    save_codec(model, tmp_path / "c.safetensors", {"architecture": arch, "N": 8, "M": 8, "note": "x"}, half=True)
    recipe = json.loads((tmp_path / "c.json").read_text())
    assert recipe["note"] == "x" and recipe["float16_transforms"] is True
    loaded, _ = load_codec(tmp_path / "c.safetensors")
    assert weights_digest(loaded) == weights_digest(model) == recipe["sha256"]


@pytest.mark.parametrize("key", ["likelihood_lower_bound.bound", "lower_bound_scale.bound"])
def test_a_file_with_other_entropy_bounds_is_refused(tmp_path, key):
    from safetensors.torch import load_file, save_file

    from lowbit.codec.architectures import codec_architecture

    arch = "bmshj2018-hyperprior-small"
    model = codec_architecture(arch).create(8, 8).eval()
    save_codec(model, tmp_path / "c.safetensors", {"architecture": arch, "N": 8, "M": 8})
    state = load_file(str(tmp_path / "c.safetensors"))
    state[f"gaussian_conditional.{key}"] = torch.zeros_like(state[f"gaussian_conditional.{key}"])
    save_file(state, str(tmp_path / "c.safetensors"))
    with pytest.raises(LowbitError, match=f"gaussian_conditional.{key}.*architecture"):
        load_codec(tmp_path / "c.safetensors")


def test_bad_options_raise():
    with pytest.raises(LowbitError, match="lambda"):
        CodecTrainOptions(lmbda=0)
    with pytest.raises(LowbitError, match="steps"):
        CodecTrainOptions(steps=0)
