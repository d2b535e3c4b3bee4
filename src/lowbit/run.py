"""One whole quantization run, as ``lowbit quantize`` and ``lowbit mixed`` perform it: quantize, evaluate the
float and the quantized model on the same test images, save the model with its run record, and write the
mixed-precision allocation beside it. The command line only turns options into these arguments and prints
the returned figures; Python users get the same run, and the same JSON, from :func:`quantize_evaluate_save`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from lowbit.analysis import per_layer_sqnr
from lowbit.api import quantize
from lowbit.config import QuantConfig
from lowbit.coverage import coverage
from lowbit.data import DatasetInfo, labelled_batches
from lowbit.device import model_device
from lowbit.evaluate import evaluate
from lowbit.io.lowbit_file import save
from lowbit.mixed import Allocation
from lowbit.mixed.allocation_files import write_allocation
from lowbit.models.weights_source import PROVENANCE_KEY

SAVED_METRICS = ("top1", "top5", "precision", "recall", "f1", "n")


def float_file_size(model: nn.Module) -> int:
    """Bytes of the float32 model saved as safetensors (the baseline of every size ratio)."""
    return len(safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}))


def _timed_metrics(model: nn.Module, test_set: Any, info: DatasetInfo, progress: bool) -> tuple[dict, float]:
    start = time.perf_counter()
    metrics = evaluate(model, test_set, class_names=info.classes, progress=progress).to_dict()
    return metrics, time.perf_counter() - start


def quantize_evaluate_save(model: nn.Module, calib: Any, config: QuantConfig, out: str | Path, *, model_name: str,
                           info: DatasetInfo | None = None, test_set: Any = None, calib_record: dict | None = None,
                           mixed: dict[str, Any] | None = None, per_layer: bool = False, progress: bool = False,
                           device: str | torch.device | None = None, weights_only_too: bool = False,
                           float_weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """Quantize ``model`` on ``calib`` with ``config``, evaluate float and quantized on ``test_set`` (when
    given), save to ``out``, and return every figure (the JSON ``lowbit quantize --json`` writes).

    ``mixed``: the keywords of :func:`lowbit.quantize` for mixed precision (``mixed``, ``sensitivity``...);
    the allocation is then also written beside ``out`` as CSV and PNG. ``calib_record`` says where the
    calibration images came from and ``float_weights`` which weights file ``model`` was loaded from
    (:mod:`lowbit.models.weights_source`); both are saved with the model. ``weights_only_too`` also quantizes the weights
    alone on the same calibration images and reports that model's metrics (``weights_only_metrics``), as DGH
    reports both from one set of synthesized images; only the fully quantized model is saved.
    """
    calib_record = {**(calib_record or {}), **({PROVENANCE_KEY: float_weights} if float_weights else {})}
    start = time.perf_counter()
    qmodel = quantize(model, calib, config, progress=progress, device=device, **(mixed or {}))
    share = coverage(qmodel)
    out = Path(out)
    result: dict[str, Any] = {"model": model_name, "dataset": info.name if info else None, "config": config.to_dict(),
                              "out": str(out), "quantize_seconds": time.perf_counter() - start,
                              "float_file_bytes": float_file_size(model), "coverage": share.to_dict(),
                              "coverage_note": share.describe(), **calib_record}
    if test_set is not None and info is not None:
        result["float_metrics"], result["float_eval_seconds"] = _timed_metrics(model, test_set, info, progress)
        result["quant_metrics"], result["quant_eval_seconds"] = _timed_metrics(qmodel, test_set, info, progress)
        if weights_only_too:
            start = time.perf_counter()
            wonly = quantize(model, calib, replace(config, activations=None,
                                                   overrides=tuple(replace(o, activations=None) for o in config.overrides)),
                             progress=progress, device=device, **(mixed or {}))
            result["weights_only_quantize_seconds"] = time.perf_counter() - start
            result["weights_only_metrics"], result["weights_only_eval_seconds"] = _timed_metrics(wonly, test_set, info,
                                                                                               progress)
        if per_layer:
            x, _ = next(iter(labelled_batches(test_set, 256)))
            result["per_layer"] = [vars(r) for r in per_layer_sqnr(model, qmodel, x.to(model_device(qmodel)))]
    extra: dict[str, Any] = {"dataset": {"name": info.name, "input_shape": list(info.input_shape)} if info else None,
                             **calib_record}
    for key in ("float_metrics", "quant_metrics"):
        if key in result:
            extra[key] = {k: result[key][k] for k in SAVED_METRICS}
    save(qmodel, out, extra)
    result["quant_file_bytes"] = out.stat().st_size
    if "mixed" in qmodel.lowbit_info.extra:
        result["mixed"] = qmodel.lowbit_info.extra["mixed"]
        title = f"{model_name}, {info.name}" if info else model_name
        csv_path, png_path = write_allocation(Allocation.from_dict(result["mixed"]), out, title)
        result["allocation_files"] = [str(csv_path), str(png_path)]
    return result
