"""ImageNet-style folders: one sub-folder of images per class, resized, center-cropped and normalized the way
the model's pretrained weights expect (mean, std, interpolation and crop ratio differ between model families:
timm's MLP-Mixer and EfficientNet-Lite expect 0.5/0.5 and bicubic resizing, torchvision's ImageNet statistics
and bilinear)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from lowbit.data.image_file import open_rgb
from lowbit.data.info import DatasetInfo
from lowbit.errors import LowbitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = 0.875


@dataclass(frozen=True)
class Preprocessing:
    """How a model's evaluation images are prepared: resize to ``image_size / crop_pct`` with ``interpolation``,
    center-crop to ``image_size``, normalize with ``mean`` and ``std``."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    crop_pct: float = CROP_RATIO


IMAGENET = Preprocessing()


def load_image_folder(path: str | Path | None, image_size: int = 224, flag: str = "--train-data-path",
                      preprocessing: Preprocessing = IMAGENET) -> tuple[Dataset, DatasetInfo]:
    """An ImageFolder with the model's evaluation transform (calibration is never augmented)."""
    from torchvision import datasets, transforms

    if path is None:
        raise LowbitError(f"the imagefolder dataset needs a folder; pass {flag}")
    root = Path(path)
    if not root.is_dir():
        raise LowbitError(f"image folder not found: {root}; check {flag}")
    mode = transforms.InterpolationMode(preprocessing.interpolation)
    transform = transforms.Compose([
        transforms.Resize(int(image_size / preprocessing.crop_pct), interpolation=mode),
        transforms.CenterCrop(image_size), transforms.ToTensor(),
        transforms.Normalize(preprocessing.mean, preprocessing.std)])
    try:
        # the checked reader: a corrupt, empty or absurdly large file is a one-line error naming it
        ds = datasets.ImageFolder(str(root), transform=transform, loader=open_rgb)
    except (FileNotFoundError, RuntimeError) as exc:
        raise LowbitError(f"no images found in {root} ({str(exc).splitlines()[0]}); it needs one sub-folder of "
                          "images per class") from None
    info = DatasetInfo("imagefolder", len(ds.classes), (3, image_size, image_size), preprocessing.mean,
                       preprocessing.std, tuple(ds.classes))
    return ds, info
