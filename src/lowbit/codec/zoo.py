"""Opening a codec by name: the bundled trained codecs, an architecture with a weights file, or a quantized
codec's ``.lowbit`` file.

A weights file carries its recipe beside it (same name, ``.json``), which names the architecture and channel
counts, so a trained codec can be reopened from the file alone. The SHA-256 digest of the loaded weights
identifies the exact model, so that a bitstream is never decoded by a different one; it is computed from the
state dict, so that any ``nn.Module`` with CompressAI's interface (a quantized codec included) has one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lowbit.codec.architectures import codec_architecture
from lowbit.codec.task import ENTROPY_MODELS, arch_record, check_entropy_bounds, is_codec
from lowbit.errors import LowbitError
from lowbit.io.atomic import atomic_path

#: Bundled codecs: name -> (weights file prefix, number of rate points). Quality q uses ``<prefix>_q<q>``.
BUNDLED = {"codec-factorized-small": ("codec_factorized_small", 3),
           "codec-hyperprior-small": ("codec_hyperprior_small", 3)}


@dataclass
class OpenCodec:
    """A codec ready to code: the model (eval mode, entropy tables built) and what identifies it."""

    model: nn.Module
    name: str  # the bundled name, or the weights file's path
    quality: int | None
    architecture: str
    stride: int
    digest: str  # SHA-256 of the weights, hex
    weights_path: Path | None
    recipe: dict[str, Any]


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the state dict's names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def bundled_weights(name: str, quality: int) -> Path:
    """The bundled weights file of codec ``name`` at ``quality`` (1 = lowest rate)."""
    if name not in BUNDLED:
        raise LowbitError(f"unknown codec {name!r}; choose one of: {', '.join(BUNDLED)}, or a .safetensors file")
    prefix, qualities = BUNDLED[name]
    if not 1 <= quality <= qualities:
        raise LowbitError(f"{name} has qualities 1 to {qualities}, got {quality}")
    path = Path(str(resources.files("lowbit.models") / "weights" / f"{prefix}_q{quality}.safetensors"))
    if not path.is_file():
        raise LowbitError(f"the bundled weights {path.name} are missing from this installation; reinstall lowbit")
    return path


def save_codec(model: nn.Module, path: str | Path, recipe: dict[str, Any], half: bool = False) -> None:
    """Write the weights (safetensors) and the recipe (JSON beside it), each atomically.

    ``half`` stores the transforms' floats as float16 to halve the file; the model is rounded the same way in
    place first, so that the saved file reloads to exactly the model that was evaluated. The entropy models
    (the bottleneck's quantiles and density, the Gaussian conditional's scale table) stay in full precision:
    they define the bitstream, and ``update`` rewrites the scale table at full precision anyway.
    """
    path = Path(path)

    def halved(name: str, tensor: torch.Tensor) -> bool:
        return half and tensor.is_floating_point() and name.split(".")[0] not in ENTROPY_MODELS

    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if halved(name, tensor):
                tensor.copy_(tensor.half().float())  # state_dict tensors share the parameters' storage
    model.update(force=True)  # the file carries entropy tables that match the parameters it holds
    state = {name: (t.half() if halved(name, t) else t).detach().contiguous().cpu()
             for name, t in model.state_dict().items()}
    recipe = {**recipe, "float16_transforms": half, "sha256": weights_digest(model)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"architecture": str(recipe.get("architecture", ""))})
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(recipe, indent=2) + "\n")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe JSON beside weights file ``path``."""
    recipe_path = Path(path).with_suffix(".json")
    try:
        recipe = json.loads(recipe_path.read_text())
    except FileNotFoundError:
        raise LowbitError(f"{recipe_path} is missing: a codec weights file needs its recipe beside it "
                          "(written by lowbit codec train)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise LowbitError(f"{recipe_path} is not a readable recipe ({exc}); rewrite it or retrain") from None
    if not isinstance(recipe, dict) or "architecture" not in recipe:
        raise LowbitError(f"{recipe_path} names no architecture; it is not a codec recipe")
    return recipe


def load_codec(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The codec saved at ``path`` (architecture from its recipe), in eval mode with its entropy tables."""
    recipe = read_recipe(path)
    arch = codec_architecture(recipe["architecture"])
    model = arch.create(recipe.get("N"), recipe.get("M"))
    try:
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError) as exc:
        raise LowbitError(f"{path} is not a readable safetensors file ({exc}); retrain or re-copy it") from None
    check_entropy_bounds(model, state, path)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise LowbitError(f"{path} does not fit {arch.name} with N={recipe.get('N')}, M={recipe.get('M')}: "
                          f"{str(exc).splitlines()[0]}") from None
    model.eval()
    model.update(force=False)  # tables come from the file; build them only where it had none
    n, m = recipe.get("N") or arch.channels[0], recipe.get("M") or arch.channels[1]
    model.lowbit_arch = arch_record(arch.name, n, m)  # what a quantized copy's file records to rebuild it
    return model, recipe


def _open_quantized(path: Path) -> OpenCodec:
    """A quantized codec saved by ``lowbit codec quantize`` (a ``.lowbit`` file)."""
    from lowbit.api import load

    model = load(str(path))
    record = model.lowbit_record
    if not is_codec(model) or record.arch is None:
        raise LowbitError(f"{path} holds a quantized classifier, not a codec; pass a codec's .lowbit file")
    arch = codec_architecture(record.arch.name)
    recipe = {"architecture": arch.name, "N": record.arch.n, "M": record.arch.m, **record.provenance}
    return OpenCodec(model, str(path), None, arch.name, arch.stride, weights_digest(model), path, recipe)


def open_codec(name: str, quality: int | None = None) -> OpenCodec:
    """A bundled codec by ``name`` and ``quality``, or the codec in weights file ``name`` (quality unused)."""
    if name in BUNDLED:
        if quality is None:
            raise LowbitError(f"{name} needs a quality: --quality 1 to {BUNDLED[name][1]}")
        path = bundled_weights(name, quality)
    else:
        path = Path(name)
        if path.suffix not in (".safetensors", ".lowbit"):
            raise LowbitError(f"unknown codec {name!r}; choose one of: {', '.join(BUNDLED)}, a .safetensors "
                              "file written by lowbit codec train, or a .lowbit file written by lowbit codec quantize")
        if not path.is_file():
            raise LowbitError(f"{path} does not exist; give a codec weights file")
        if path.suffix == ".lowbit":
            return _open_quantized(path)
        quality = None
    model, recipe = load_codec(path)
    arch = codec_architecture(recipe["architecture"])
    return OpenCodec(model, name, quality, arch.name, arch.stride, weights_digest(model), path, recipe)
