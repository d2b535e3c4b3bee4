"""The reference training recipe: both optimizers learn, AdamW spares norms and embeddings, the CLI saves a
checkpoint and its recipe."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from conftest import make_image_folder
from lowbit import LowbitError
from lowbit.cli import main
from lowbit.models import build_model
from lowbit.train import TrainOptions, make_optimizer, train


def _separable(n: int = 256) -> TensorDataset:
    """Two classes told apart by the brightness of the left half of the image."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 8, 8, generator=gen) * 0.3
    x[:, :, :, :4] += (2 * y - 1).view(-1, 1, 1, 1).float()
    return TensorDataset(x, y)


def _accuracy(model: torch.nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.05), ("adamw", 1e-2)])
def test_both_optimizers_learn(optimizer, lr):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    data = _separable()
    options = TrainOptions(epochs=3, batch_size=32, lr=lr, optimizer=optimizer, crop_padding=0, flip=False)
    before = _accuracy(model, data)
    train(model, data, options, quiet=True)
    assert _accuracy(model, data) > max(0.95, before)


def test_adamw_does_not_decay_norms_biases_or_embeddings():
    model = build_model("vit_small", num_classes=10, in_channels=1)
    opt = make_optimizer(model, TrainOptions(optimizer="adamw", weight_decay=0.05))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.head.weight) in decayed and id(model.patch_embed.weight) in decayed
    for p in (model.head.bias, model.norm.weight, model.cls_token, model.pos_embed):
        assert id(p) not in decayed
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_unknown_optimizer_is_an_error():
    with pytest.raises(LowbitError, match="unknown optimizer 'adam'.*sgd, adamw"):
        TrainOptions(optimizer="adam")


def test_cli_train_saves_checkpoint_and_recipe(tmp_path):
    make_image_folder(tmp_path / "train", per_class=4, size=(20, 20))
    make_image_folder(tmp_path / "val", per_class=4, size=(20, 20))
    out = tmp_path / "vit.safetensors"
    assert main(["train", "vit_small", "--dataset", "imagefolder", "--train-data-path", str(tmp_path / "train"),
                 "--val-data-path", str(tmp_path / "val"), "--image-size", "16", "--epochs", "1",
                 "--batch-size", "4", "--optimizer", "adamw", "--lr", "1e-3", "--out", str(out), "--quiet"]) == 0
    recipe = json.loads(out.with_suffix(".json").read_text())
    assert recipe["options"]["optimizer"] == "adamw" and recipe["model_kwargs"]["image_size"] == 16
    # the check figure covers the first test images: here all 8 of them, so it is the test top-1 itself
    assert recipe["check"] == {"test_images": 8, "top1": recipe["test_top1"]}
    state = load_file(str(out))
    model = build_model("vit_small", **recipe["model_kwargs"])
    model.load_state_dict(state)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 2)
