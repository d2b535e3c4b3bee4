"""Checks on the files a command is about to write, made before any work starts.

Every output is written atomically (see :mod:`lowbit.io.atomic`), which makes a mistyped path dangerous rather
than harmless: ``--json`` naming the model file, or ``--out`` naming the float checkpoint, silently replaces
it. So each command lists its inputs and outputs, keyed by the option that names them, and a clash stops the
run at once with one line that names both options.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.io.atomic import file_kind

PathArg = str | os.PathLike | None

#: Options of the model and data arguments that name files or folders the commands read.
INPUT_OPTIONS = ("checkpoint", "data_dir", "train_data_path", "val_data_path")

# --calib-data values that name a source of images rather than a folder
CALIB_CHOICES = ("train", "synthetic", "noise")


def check_outputs(inputs: Mapping[str, PathArg], outputs: Mapping[str, PathArg]) -> None:
    """Raise :class:`LowbitError` unless every output can be written without destroying anything.

    ``inputs`` and ``outputs`` map a label (the option, e.g. ``--out``, or ``--out (recipe)`` for a file derived
    from it) to a path; ``None`` entries are skipped. Refused: an output that exists but is not a regular file
    (a folder, device or pipe would be replaced by a file), an output under something that is not a folder,
    an output that is an input (the same file, through links too), and two outputs that are the same file.
    """
    outs = [(label, Path(p)) for label, p in outputs.items() if p is not None and str(p) != ""]
    ins = [(label, Path(p)) for label, p in inputs.items() if p is not None and str(p) != ""]
    for label, path in outs:
        _check_kind(label, path)
    for (label, path), (in_label, in_path) in ((o, i) for o in outs for i in ins):
        if same_file(path, in_path):
            raise LowbitError(f"{label} {path} is the input {in_label}; choose another {_option(label)} so that the "
                              "input is not overwritten")
    for (a_label, a), (b_label, b) in combinations(outs, 2):
        if same_file(a, b):
            named = b_label if " " not in b_label else a_label  # prefer the option the user typed as is
            raise LowbitError(f"{a_label} and {b_label} both write {b}; give {_option(named)} another file name")


def cli_inputs(args: argparse.Namespace, more: Mapping[str, PathArg] | None = None) -> dict[str, PathArg]:
    """The inputs named by the usual model and data options of ``args`` (those it has), plus ``more``.

    ``--calib-data FOLDER`` counts with the image file inside it, which is what is read.
    """
    from lowbit.data.synthetic_files import IMAGES_FILE

    inputs: dict[str, PathArg] = {f"--{name.replace('_', '-')}": getattr(args, name, None) for name in INPUT_OPTIONS}
    calib = getattr(args, "calib_data", None)
    if calib and calib not in CALIB_CHOICES:
        inputs["--calib-data"] = calib
        inputs["--calib-data images"] = Path(calib) / IMAGES_FILE
    return {**inputs, **(more or {})}


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same inode when both exist, else the same resolved path."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _option(label: str) -> str:
    return label.split(" ", 1)[0]


def _check_kind(label: str, path: Path) -> None:
    """An output must be a regular file or not exist yet, in a folder (or where a folder can be made)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # the latter is reported below, naming the culprit
        mode = None
    except OSError as exc:
        raise LowbitError(f"{label} {path} cannot be checked ({exc.strerror}); choose another path") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise LowbitError(f"{label} {path} is {file_kind(mode)}, not a regular file; name a file to write instead")
    for parent in path.absolute().parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise LowbitError(f"{label} {path} cannot be written: {parent} is not a folder; choose another path")
            return

