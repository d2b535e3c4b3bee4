"""Which float weights a quantized file came from, so that a later command can find that float model again.

A quantized file stores no float weights. Fine-tuning learns best from the float model's outputs, so
``lowbit quantize`` records the weights file it loaded (the bundled weights by model name, a user's checkpoint
by absolute path) with its SHA-256, and ``lowbit finetune`` uses it as the teacher when the file is still there
with the same bytes. The record is read from a file that may have been edited: every field is checked, and a
record that does not lead to a regular file with the recorded digest is ignored, never trusted.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping

from lowbit.models.zoo import bundled_checkpoint

PROVENANCE_KEY = "float_weights"
_CHUNK = 1 << 20
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_weights(path: str | Path, model_name: str) -> dict[str, Any]:
    """The provenance record of the float weights at ``path``: bundled ones by model name (their install path
    changes between machines), any other file by absolute path."""
    path = Path(path).resolve()
    bundled = bundled_checkpoint(model_name)
    record: dict[str, Any] = {"sha256": file_digest(path)}
    if bundled is not None and bundled.resolve() == path:
        record["bundled"] = model_name
    else:
        record["path"] = str(path)
    return record


def find_weights(record: Any) -> Path | None:
    """The float weights file a provenance record names, when it still holds the recorded bytes; else None."""
    if not isinstance(record, Mapping) or not isinstance(record.get("sha256"), str):
        return None
    bundled, path = record.get("bundled"), record.get("path")
    if isinstance(bundled, str) and path is None:
        if not _MODEL_NAME.fullmatch(bundled):  # a name, never a path out of the weights folder
            return None
        found = bundled_checkpoint(bundled)
    elif isinstance(path, str) and bundled is None and len(path) < 4096:
        found = Path(path)
    else:
        return None
    if found is None or not found.is_file() or file_digest(found) != record["sha256"]:
        return None
    return found
