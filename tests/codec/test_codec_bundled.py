"""The bundled codecs: they load offline, match their recipes, and order their rate points on a held-out photo."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from lowbit.codec.images import read_image
from lowbit.codec.photos import HELD_OUT, held_out_photos
from lowbit.codec.rate_distortion import evaluate_codec
from lowbit.codec.zoo import BUNDLED, open_codec
from lowbit.errors import LowbitError

NAME = "codec-factorized-small"


@pytest.mark.parametrize("name", list(BUNDLED))
def test_each_quality_loads_with_the_recipe_digest_and_was_not_trained_on_held_out_photos(name):
    for quality in range(1, BUNDLED[name][1] + 1):
        codec = open_codec(name, quality)
        assert codec.digest == codec.recipe["sha256"]
        assert codec.recipe["architecture"] == codec.architecture
        trained_on = {name.removeprefix("skimage_") for name in codec.recipe["training_photos"]}
        assert not trained_on & set(HELD_OUT)


@pytest.mark.parametrize("name", list(BUNDLED))
def test_rate_points_are_ordered_on_a_held_out_photo(name):
    photo = read_image(held_out_photos()[0])  # astronaut, 512x512: a quarter of it keeps the test fast
    small = F.interpolate(photo[None], size=(128, 128), mode="area")[0]
    results = []
    for quality in range(1, BUNDLED[name][1] + 1):
        codec = open_codec(name, quality)
        results.append(evaluate_codec(codec.model, [("astronaut", small)], codec.stride).images[0])
    bpps, psnrs = [r.bpp for r in results], [r.psnr for r in results]
    assert bpps == sorted(bpps) and len(set(bpps)) == len(bpps)
    assert psnrs == sorted(psnrs) and len(set(psnrs)) == len(psnrs)


@pytest.mark.parametrize("quality", [0, 4])
def test_unknown_quality_is_refused(quality):
    with pytest.raises(LowbitError, match="qualities 1 to 3"):
        open_codec(NAME, quality)
