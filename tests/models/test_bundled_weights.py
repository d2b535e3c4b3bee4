"""Every bundled checkpoint loads into its architecture and still scores exactly what its recipe file records."""

import json

import pytest
import torch

import lowbit
from lowbit.data import load_dataset
from lowbit.models import build_model, bundled_checkpoint, load_checkpoint
from lowbit.models.zoo import WEIGHTS_DIR

RECIPES = sorted(WEIGHTS_DIR.glob("*.json"))
# the bundled image codecs are checked by rate and distortion in tests/codec/test_codec_bundled.py
CLASSIFIER_RECIPES = [p for p in RECIPES if not p.stem.startswith("codec_")]


def test_each_model_has_weights_and_a_recipe():
    assert {p.stem for p in RECIPES} == {p.stem for p in WEIGHTS_DIR.glob("*.safetensors")}
    assert {"resnet20_fmnist", "mobilenet_v2_small_fmnist", "vit_small_fmnist"} <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("recipe", CLASSIFIER_RECIPES, ids=lambda p: p.stem)
def test_bundled_accuracy_matches_its_recipe(recipe):
    info = json.loads(recipe.read_text())
    model = load_checkpoint(build_model(info["model"], **info["model_kwargs"]), bundled_checkpoint(info["model"]))
    test, _ = load_dataset(info["dataset"], "test")
    check = info["check"]
    subset = torch.utils.data.Subset(test, range(check["test_images"]))
    # one image may flip where a reduction order differs (thread count, CPU); any change to the weights shows more
    assert abs(lowbit.evaluate(model.eval(), subset).top1 - check["top1"]) <= 1 / check["test_images"] + 1e-9
