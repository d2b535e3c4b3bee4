import pickle

import numpy as np
import pytest

from conftest import make_image_folder
from lowbit import LowbitError
from lowbit.data import load_dataset


def test_fashion_mnist_info():
    ds, info = load_dataset("fashion-mnist", "test")
    assert len(ds) == 10000 and info.input_shape == (1, 28, 28) and info.num_classes == 10
    assert info.classes[0] == "T-shirt/top"


def test_unknown_name():
    with pytest.raises(LowbitError, match="fashion-mnist, cifar10, imagefolder"):
        load_dataset("mnist", "test")


def test_image_folder_resizes_crops_and_normalizes(tmp_path):
    make_image_folder(tmp_path / "train")
    ds, info = load_dataset("imagefolder", "train", train_path=tmp_path / "train", image_size=32)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and info.num_classes == 2 and info.classes == ("cat", "dog")
    assert -3 < float(x.mean()) < 3


@pytest.mark.parametrize("setup,pattern", [("none", "--val-data-path"), ("missing", "not found"), ("empty", "no images")])
def test_image_folder_errors(tmp_path, setup, pattern):
    path = None if setup == "none" else tmp_path / "val"
    if setup == "empty":
        path.mkdir()
    with pytest.raises(LowbitError, match=pattern):
        load_dataset("imagefolder", "test", val_path=path)


def _make_cifar(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, n))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return folder


def test_cifar10_python_batches(tmp_path):
    _make_cifar(tmp_path)
    train, info = load_dataset("cifar10", "train", data_dir=tmp_path)
    test, _ = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert len(train) == 30 and len(test) == 6 and train.tensors[0].shape[1:] == (3, 32, 32)
    assert info.classes[3] == "c3"


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_refuses_code_in_pickles(tmp_path):
    folder = _make_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(LowbitError, match="builtins.print"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar10_missing(tmp_path):
    with pytest.raises(LowbitError, match="--data-dir"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


@pytest.mark.parametrize("batch,message", [
    ({b"data": np.zeros((6, 3072), np.uint8), b"labels": [0, 1, 2, 3, 4, 10]}, "labels from 0 to 10"),
    ({b"data": np.zeros((6, 3072), np.uint8), b"labels": [-1, 1, 2, 3, 4, 5]}, "labels from -1 to 5"),
    ({b"data": np.zeros((6, 3072), np.uint8), b"labels": [0, 1]}, "6 images but 2 labels"),
    ({b"data": np.zeros((6, 1000), np.uint8), b"labels": [0] * 6}, "rows of 3072 pixels"),
    ({b"data": np.zeros((6, 3072), np.float32), b"labels": [0] * 6}, "rows of 3072 pixels"),
    ({b"data": np.zeros((6, 3072), np.uint8), b"labels": ["cat"] * 6}, "not integers"),
    ({b"labels": [0] * 6}, "not a CIFAR-10 batch"),
    ([1, 2, 3], "not a CIFAR-10 batch"),
])
def test_cifar10_malformed_batches_are_refused_in_one_line(tmp_path, batch, message):
    folder = _make_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(LowbitError, match=message) as info:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert "\n" not in str(info.value) and "re-download" in str(info.value)


def test_cifar10_truncated_batch(tmp_path):
    folder = _make_cifar(tmp_path)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LowbitError, match="cannot read CIFAR-10 file .*data_batch_3"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_text("not an image"), "not an image Pillow can read"),
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "truncated or corrupt"),
])
def test_image_folder_with_a_damaged_file_names_it_in_one_line(tmp_path, damage, message):
    make_image_folder(tmp_path / "val")
    bad = tmp_path / "val" / "dog" / "1.png"
    damage(bad)
    ds, _ = load_dataset("imagefolder", "test", val_path=tmp_path / "val", image_size=32)
    assert ds[0][0].shape == (3, 32, 32)  # the intact images still load
    with pytest.raises(LowbitError, match=message) as info:
        [ds[i] for i in range(len(ds))]
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_image_folder_converts_grayscale_to_rgb(tmp_path):
    from PIL import Image
    make_image_folder(tmp_path / "val")
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "val" / "cat" / "gray.png")
    ds, _ = load_dataset("imagefolder", "test", val_path=tmp_path / "val", image_size=32)
    assert all(ds[i][0].shape == (3, 32, 32) for i in range(len(ds)))


def test_image_folder_is_prepared_as_the_models_weights_expect(tmp_path):
    import argparse

    import torch

    from lowbit.cli.common import load_data
    from lowbit.data.imagefolder import IMAGENET, Preprocessing
    from lowbit.models.registry import architecture

    mixer = architecture("mlp_mixer").preprocessing
    assert mixer == Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 0.875)
    assert architecture("resnet18").preprocessing == IMAGENET
    assert architecture("efficientnet_lite0").preprocessing.mean == (0.5, 0.5, 0.5)
    make_image_folder(tmp_path / "val", size=(40, 40))  # 35 / crop_pct resizes to 40: no resampling at all
    args = argparse.Namespace(dataset="imagefolder", data_dir=None, train_data_path=None,
                              val_data_path=tmp_path / "val", image_size=35, model="mlp_mixer")
    as_mixer = load_data(args, "test")[0][0][0]
    args.model = "resnet18"
    as_resnet = load_data(args, "test")[0][0][0]
    # the same pixels, normalized by each model's statistics
    mean, std = torch.tensor(IMAGENET.mean)[:, None, None], torch.tensor(IMAGENET.std)[:, None, None]
    pixels = as_resnet * std + mean
    assert torch.allclose(as_mixer, (pixels - 0.5) / 0.5, atol=1e-5)
    assert not torch.allclose(as_mixer, as_resnet, atol=0.05)
