"""CompressAI's submodules, imported on first use and quietly.

Importing any part of ``compressai`` runs its package ``__init__``, which pulls in SciPy, pandas and
torch-geometric: commands that never touch a codec should not pay for that, so every codec module imports
CompressAI through here, when it is needed. torch-geometric's import-time deprecation warning about
``torch.jit.script`` concerns that library's code, not the user's, so it is silenced here and only here.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType


def compressai_module(name: str) -> ModuleType:
    """``compressai.<name>`` (e.g. ``"models"``, ``"layers"``), imported without CompressAI's import warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        return importlib.import_module(f"compressai.{name}")
