"""Loading user weights: safetensors, or a torch state dict read with ``weights_only=True`` (never a pickle)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from lowbit.errors import LowbitError, first_line
from lowbit.models.foreign_layouts import to_zoo_layout

NESTED_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from common containers, without ``module.`` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise LowbitError(f"checkpoint not found: {path}; check the path")
    try:
        if path.suffix == ".safetensors":
            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or "Unsupported global" in str(exc):  # pickles that import and call Python code
            raise LowbitError(f"checkpoint {path} contains code (pickled Python objects), which lowbit will not "
                              "run; re-save it with torch.save(model.state_dict()) or as safetensors") from None
        raise LowbitError(f"checkpoint {path} is not a checkpoint, or is corrupt or truncated; re-export it") from None
    except Exception as exc:  # torch.load on arbitrary bytes raises almost any type (KeyError on a text file)
        raise LowbitError(f"checkpoint {path} is not a checkpoint, or is corrupt or truncated "
                          f"({first_line(exc)[:120]}); re-export it") from None
    for key in NESTED_KEYS:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LowbitError(f"checkpoint {path} is not a state dict of tensors; save model.state_dict()")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``model`` strictly, explaining any mismatch in one line. Checkpoints other projects
    publish for a zoo architecture under their own names (BRECQ's MobileNet-V2) are renamed first."""
    sd = read_state_dict(path)
    name = getattr(model, "lowbit_arch", None) or {}
    sd = to_zoo_layout(name.get("name", ""), sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong_shape = [k for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or unexpected or wrong_shape:
        name = getattr(model, "lowbit_arch", {}).get("name", type(model).__name__)
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            k = wrong_shape[0]
            detail.append(f"shape mismatch at {k}: {tuple(sd[k].shape)} in the file vs {tuple(own[k].shape)}")
        raise LowbitError(f"checkpoint {path} does not match architecture {name}: {'; '.join(detail)}; "
                          "pass the --model this checkpoint was trained for")
    _check_values(path, sd, own)
    model.load_state_dict(sd, strict=True)
    return model


def _check_values(path: str | Path, sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """Refuse weights that would quantize into garbage: NaN/Inf values, or integers where the model has floats."""
    for key, value in sd.items():
        if own[key].is_floating_point() and not value.is_floating_point():
            raise LowbitError(f"checkpoint {path} stores {key} as {value.dtype} where the model has "
                              f"{own[key].dtype}; re-save the float model's state_dict")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise LowbitError(f"checkpoint {path} holds NaN or infinite values in {key}; the training diverged "
                              "or the file is damaged — use a checkpoint of a working model")
