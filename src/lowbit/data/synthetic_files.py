"""Generated calibration sets on disk: ``images.safetensors`` (the tensor, with how it was made as JSON
metadata) and ``grid.png`` (a contact sheet of the first images in pixel space), in one folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lowbit.errors import LowbitError
from lowbit.io.atomic import atomic_path

IMAGES_FILE, GRID_FILE, META_KEY = "images.safetensors", "grid.png", "lowbit_synthetic"


def save_synthetic(images: torch.Tensor, folder: str | Path, mean: Sequence[float], std: Sequence[float],
                   info: dict[str, Any] | None = None, grid_images: int = 64) -> tuple[Path, Path]:
    """Write ``images`` (normalized by ``mean``/``std``) and their PNG grid into ``folder``."""
    from torchvision.utils import save_image

    folder = Path(folder)
    meta = {"shape": list(images.shape), "mean": list(mean), "std": list(std), **(info or {})}
    tensor_path = folder / IMAGES_FILE
    with atomic_path(tensor_path) as tmp:
        save_file({"images": images.detach().float().contiguous().cpu()}, str(tmp),
                  metadata={META_KEY: json.dumps(meta)})
    pixels = denormalize(images[:grid_images], mean, std)
    grid_path = folder / GRID_FILE
    with atomic_path(grid_path) as tmp:
        save_image(pixels, str(tmp), nrow=8, padding=2, format="png")
    return tensor_path, grid_path


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Back to pixel values in [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1)


def load_synthetic(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Images and metadata from a folder written by :func:`save_synthetic` (or its ``images.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        path = path / IMAGES_FILE
    if not path.is_file():
        raise LowbitError(f"no generated images at {path}; create them with `lowbit synth --out FOLDER`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
            images = f.get_tensor("images")
    except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise LowbitError(f"{path} is not a generated image set ({exc}); create one with `lowbit synth`") from None
    return images, meta
