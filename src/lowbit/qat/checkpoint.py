"""Checkpoints of a fine-tuning run, and resuming from one.

A checkpoint is two files, each written atomically:
- ``NAME.lowbit``: the model as it stands, frozen like any saved model (``lowbit eval`` reads it), with the run's
  options, history and position (epoch, step) in its provenance;
- ``NAME.state.safetensors``: what freezing loses and an exact resume needs: the float weights between grid
  points, the learned step sizes, the best epoch's model so far and the optimizer state (tensors, with the
  optimizers' settings as JSON in the header; no pickles).
The state file is written first and names the step it belongs to, so a run killed between the two writes is
noticed. Without a matching state file, a zoo model resumes from the ``.lowbit`` file's weights and counters
(its held-out score makes it the best epoch so far, since the earlier best model is gone).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lowbit.errors import LowbitError
from lowbit.io import lowbit_file
from lowbit.io.atomic import atomic_path
from lowbit.layers import quant_layers
from lowbit.qat.loop import RunState, Trainer
from lowbit.qat.trainable import copy_quantized, refreeze

log = logging.getLogger(__name__)

STATE_KEY = "lowbit_finetune_state"
RECORD_KEY = "finetune"


def state_path(checkpoint: Path) -> Path:
    """The file beside ``checkpoint`` that holds the float training state."""
    return checkpoint.with_name(f"{checkpoint.stem}.state.safetensors")


def _tensors_and_meta(trainer: Trainer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {f"model/{k}": v for k, v in trainer.model.state_dict().items()}
    if trainer.best is not None:
        tensors.update({f"best/{k}": v for k, v in trainer.best.items()})
    meta: dict[str, Any] = {"global_step": trainer.state.global_step, "optimizers": {}}
    for name, opt in trainer.optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entry in sd["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{name}/{index}/{key}"] = value
                else:
                    scalars.setdefault(str(index), {})[key] = value
        meta["optimizers"][name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    return {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, meta


def write_checkpoint(trainer: Trainer, path: Path) -> None:
    """Both files of a checkpoint of ``trainer``'s run as it stands (state file first)."""
    tensors, meta = _tensors_and_meta(trainer)
    with atomic_path(state_path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(meta)})
    snapshot = copy_quantized(trainer.model)
    refreeze(snapshot)
    extra = {k: v for k, v in snapshot.lowbit_info.extra.items() if k != "quant_metrics"}  # the starting model's
    snapshot.lowbit_info.extra = {**extra, RECORD_KEY: {**trainer.record(), "progress": trainer.state.to_dict()}}
    lowbit_file.save(snapshot, path)
    log.info("checkpoint %s at epoch %d, step %d", path, trainer.state.epoch, trainer.state.step)


def _run_record(path: Path, trainer: Trainer) -> dict[str, Any]:
    """The checkpoint's fine-tuning record, after checking that it was written for this model."""
    record = lowbit_file.read_record(path)
    run = record.provenance.get(RECORD_KEY)
    if not isinstance(run, dict) or not isinstance(run.get("progress"), dict):
        raise LowbitError(f"{path} is not a fine-tuning checkpoint (its provenance has no fine-tuning progress); "
                          "pass a checkpoint written by finetune")
    bits = {n: layer.weight_quant.spec.bits for n, layer in quant_layers(trainer.model)}
    if dict(record.bits) != bits:
        raise LowbitError(f"{path} was written for another model (its layers or widths differ); resume with the "
                          "model the run started from")
    saved = run.get("options")
    if isinstance(saved, dict):
        changed = sorted(k for k, v in trainer.options.to_dict().items()
                         if k not in ("epochs", "checkpoint_every") and saved.get(k, v) != v)
        if changed:
            warnings.warn(f"resuming {path} with options that differ from the checkpoint's: {', '.join(changed)}",
                          stacklevel=3)
    return run


def _read_state(path: Path, global_step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The state file of checkpoint ``path`` if it exists and belongs to the same step, else None."""
    sidecar = state_path(path)
    if not sidecar.is_file():
        return None
    try:
        with safe_open(str(sidecar), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(STATE_KEY, "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LowbitError(f"{sidecar} is damaged ({str(exc)[:100]}); delete it to resume from {path} alone") from None
    if not isinstance(meta, dict) or meta.get("global_step") != global_step:
        warnings.warn(f"{sidecar} belongs to another step than {path}; resuming from the .lowbit file alone",
                      stacklevel=3)
        return None
    return tensors, meta


def _load_optimizer(opt: torch.optim.Optimizer, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    saved = meta["optimizers"][name]
    state: dict[int, dict[str, Any]] = {}
    for index, entry in saved["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    prefix = f"optim/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix):].split("/", 1)
            state.setdefault(int(index), {})[field] = value
    opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def _restore_exact(trainer: Trainer, tensors: dict[str, torch.Tensor], meta: dict, sidecar: Path) -> None:
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    best = {k[len("best/"):]: v for k, v in tensors.items() if k.startswith("best/")}
    try:
        trainer.model.load_state_dict(model)
        for name, opt in trainer.optimizers.items():
            _load_optimizer(opt, name, tensors, meta)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise LowbitError(f"{sidecar} does not fit this model or these options ({str(exc).splitlines()[0][:120]}); "
                          "resume with the model and options the run started with") from None
    device = next(iter(trainer.model.state_dict().values())).device
    trainer.best = {k: v.to(device) for k, v in best.items()} or None


def _restore_from_file(trainer: Trainer, path: Path) -> None:
    """Weights and grids from the frozen ``.lowbit`` checkpoint (a zoo architecture), the optimizers restarted."""
    from lowbit.models import rebuild

    record = lowbit_file.read_record(path, verify=False)
    if record.arch is None:
        raise LowbitError(f"{state_path(path)} is missing, and {path} holds a custom architecture; resuming needs "
                          "the state file written beside the checkpoint")
    loaded = lowbit_file.load(path, rebuild)
    weights = {k: v for k, v in loaded.state_dict().items() if not k.endswith(".qweight")}
    trainer.model.load_state_dict(weights)
    trainer.best = None


def restore(trainer: Trainer, path: Path) -> None:
    """Continue ``trainer`` from checkpoint ``path``: weights, step sizes, counters, history and, with the state
    file, the float weights, best model and optimizer state too."""
    run = _run_record(path, trainer)
    state = RunState.from_dict(run["progress"], str(path))
    found = _read_state(path, state.global_step)
    if found is not None:
        _restore_exact(trainer, *found, state_path(path))
        trainer.state = state
    else:
        _restore_from_file(trainer, path)
        trainer.state = state
        trainer.state.best_score = None  # the best model so far is gone: this one is judged afresh
        metrics = trainer.evaluate()
        trainer.consider(state.epoch, metrics)
    trainer.summary["resumed_from"] = str(path)
    log.info("resuming %s at epoch %d, step %d", path, state.epoch, state.step)
