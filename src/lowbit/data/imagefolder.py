"""ImageNet-style folders: one sub-folder of images per class, resized, center-cropped and normalized."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from lowbit.data.image_file import open_rgb
from lowbit.data.info import DatasetInfo
from lowbit.errors import LowbitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = 0.875


def load_image_folder(path: str | Path | None, image_size: int = 224, flag: str = "--train-data-path") -> tuple[Dataset, DatasetInfo]:
    """An ImageFolder with the evaluation transform (calibration is never augmented)."""
    from torchvision import datasets, transforms

    if path is None:
        raise LowbitError(f"the imagefolder dataset needs a folder; pass {flag}")
    root = Path(path)
    if not root.is_dir():
        raise LowbitError(f"image folder not found: {root}; check {flag}")
    transform = transforms.Compose([
        transforms.Resize(int(image_size / CROP_RATIO)), transforms.CenterCrop(image_size), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        # the checked reader: a corrupt, empty or absurdly large file is a one-line error naming it
        ds = datasets.ImageFolder(str(root), transform=transform, loader=open_rgb)
    except (FileNotFoundError, RuntimeError) as exc:
        raise LowbitError(f"no images found in {root} ({str(exc).splitlines()[0]}); it needs one sub-folder of "
                          "images per class") from None
    info = DatasetInfo("imagefolder", len(ds.classes), (3, image_size, image_size), IMAGENET_MEAN, IMAGENET_STD,
                       tuple(ds.classes))
    return ds, info
