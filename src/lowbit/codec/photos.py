"""The photographs the bundled codecs were trained and are evaluated on.

The held-out photos ship inside scikit-image's wheel (``skimage/data``), a dependency of lowbit, so tests,
benchmarks and ``lowbit codec eval`` find them offline. They were never shown to the codecs in training;
the training set is named here too, so that the split is recorded in one place.
"""

from __future__ import annotations

from pathlib import Path

from lowbit.errors import LowbitError

#: Colour photographs in scikit-image's data folder kept out of training.
HELD_OUT = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")

#: scikit-image photographs (colour, and grayscale ones used as RGB) the bundled codecs were trained on,
#: together with two photographs from Debian wallpaper packages (see the recipe files).
TRAINING = ("motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
            "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png")


def skimage_data() -> Path:
    """scikit-image's data folder, where the photos are."""
    try:
        import skimage
    except ImportError:
        raise LowbitError("the bundled photos come with scikit-image; install it: pip install scikit-image") from None
    return Path(skimage.__file__).parent / "data"


def held_out_photos() -> list[Path]:
    """Paths of the held-out photos, or a one-line error naming any that is missing."""
    folder = skimage_data()
    paths = [folder / name for name in HELD_OUT]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise LowbitError(f"scikit-image at {folder} lacks {', '.join(missing)}; reinstall it: pip install "
                          "--force-reinstall scikit-image, or pass --images")
    return paths


def training_photos() -> list[Path]:
    """Paths of the scikit-image training photos that this installation has."""
    folder = skimage_data()
    return [folder / name for name in TRAINING if (folder / name).is_file()]
