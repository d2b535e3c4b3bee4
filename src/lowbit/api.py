"""The entry points that tie the layers together: ``lowbit.quantize`` (prepare -> calibrate -> optimize ->
freeze, one call) and ``lowbit.load`` (a saved file into a zoo architecture or the caller's own)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn

from lowbit.algorithms import get_algorithm, make_options
from lowbit.algorithms.bias_correction import correct_biases
from lowbit.algorithms.equalization import equalize_ranges
from lowbit.algorithms.gain_correction import correct_gains
from lowbit.calibrate import calibrate_activations, calibrate_weights, freeze
from lowbit.config import Override, QuantConfig
from lowbit.coverage import coverage
from lowbit.data.calibration import calibration_batches
from lowbit.data.scale_check import check_input_scale
from lowbit.device import model_device
from lowbit.dtypes import as_float32, keep_interface_dtype, parameter_dtype
from lowbit.errors import LowbitError
from lowbit.graph import activation_quantizers, prepare
from lowbit.graph_parts import parts_difference
from lowbit.io import lowbit_file
from lowbit.mixed.allocate import Allocation, Sensitivity, analyze, solve_budget
from lowbit.mixed.budget import Budget
from lowbit.mixed.drop_search import smallest_within_drop, split_holdout
from lowbit.spec import Bits
from lowbit.tasks import DEFAULT as DEFAULT_TASK
from lowbit.tasks import Task, rebuild, task_of

log = logging.getLogger(__name__)
# a model in traced parts is checked against itself on this many calibration images before it is quantized; folding
# batch-norm moves outputs by float rounding only, far below this share of the largest output
PARTS_CHECK_IMAGES = 16
PARTS_TOLERANCE = 1e-3


def quantize(model: nn.Module, data: Any = None, config: QuantConfig | None = None, *,
             weights_bits: Bits = 8, activation_bits: Bits | None = 8, method: str = "nearest",
             calib_images: int = 1024, batch_size: int = 64, seed: int = 0, progress: bool = False,
             device: str | torch.device | None = None, mixed: Budget | None = None,
             sensitivity: Sensitivity | None = None, sensitivity_images: int = 256,
             sensitivity_options: dict[str, Any] | None = None, **options: Any) -> nn.Module:
    """Quantize ``model`` and return the quantized ``nn.Module`` (the input model is left untouched).

    ``data`` is calibration input: a tensor, an iterable of tensors or ``(input, label)`` pairs (labels are
    ignored), a Dataset, or a dataset name. It may be ``None`` only when nothing needs calibrating (weights
    only, or fp16/dynamic activations) and the method needs no data. Either pass a :class:`QuantConfig`, or
    the keywords (``weights_bits``, ``activation_bits``, ``method``; other keywords are the config's
    ``from_bits`` options such as ``first_last_bits`` or the method's own options such as ``iters``).

    ``mixed`` turns on mixed precision: each layer gets the width from ``mixed.bits`` that minimizes the total
    ``sensitivity`` (scored on ``sensitivity_images`` calibration images; by default the task's own:
    ``hessian`` for classifiers, ``rate-distortion`` for codecs) within the budget; layers fixed by
    overrides (e.g. ``first_last_bits``) keep theirs; ``sensitivity_options`` are the metric's own keywords
    (``{"beta": 10}`` for orthogonality). The chosen allocation is kept in
    ``qmodel.lowbit_info.extra["mixed"]`` and saved with the model. A budget with ``max_drop`` (classifiers)
    returns the smallest allocation found whose top-1 classes differ from the float model's on at most that
    percentage of ``mixed.holdout_images`` further images of ``data``, set aside from calibration
    (:mod:`lowbit.mixed.drop_search`); the probes it quantized are recorded under ``"search"``.
    """
    if config is None:
        config_keys = {"bias_correction", "gain_correction", "equalize", "weights_observer", "activation_observer",
                       "symmetric_weights", "per_channel", "dynamic_activations", "first_last_bits", "residual_bits",
                       "overrides", "float_residual_stream"}
        config_kwargs = {k: options.pop(k) for k in list(options) if k in config_keys}
        config = QuantConfig.from_bits(weights_bits, activation_bits, method=method, method_options=options,
                                       calib_images=calib_images, batch_size=batch_size, seed=seed, **config_kwargs)
    elif options:
        config = replace(config, method_options={**config.method_options, **options})
    task = task_of(model)
    task.setup()
    config = task.configure(model, config)
    if config.equalize is None:
        config = replace(config, equalize=task.equalizes)
    method_options = make_options(config.method, config.method_options, config.seed)
    config = replace(config, method_options=asdict(method_options))  # record every option in the saved metadata
    torch.manual_seed(config.seed)
    dtype = parameter_dtype(model)
    model = as_float32(model)
    if device is not None:
        model = model.to(device)
    if data is None and (mixed is not None or config.method != "nearest"):
        raise LowbitError("calibration data is required for mixed precision and learned rounding; pass data "
                          "(a tensor, a DataLoader or a dataset name)")
    searching = mixed is not None and mixed.max_drop is not None
    if searching and task.name != DEFAULT_TASK:
        raise LowbitError(f"an accuracy target (max_drop) needs a classifier, and this model is a {task.name} model; "
                          "give a size budget instead")
    holdout_images = mixed.holdout_images if searching else 0
    batches = calibration_batches(data, config.calib_images + holdout_images, config.batch_size,
                                  config.seed) if data is not None else []
    if searching:
        batches, holdout = split_holdout(batches, config.calib_images, holdout_images, config.batch_size)
    if batches:
        check_input_scale(model, batches[0])
    if config.equalize:
        model = equalize_ranges(model, batches, config, task.unequalized(model))

    def quantize_with(allocation: Allocation | None, overrides: tuple[Override, ...] = ()) -> nn.Module:
        chosen = config if allocation is None else allocation.to_config(config)
        chosen = replace(chosen, overrides=overrides + tuple(chosen.overrides))
        return _calibrated(model, batches, chosen, task, allocation, data is not None, progress)

    if mixed is None:
        qmodel = quantize_with(None)
    else:
        images = torch.cat(batches)[:sensitivity_images]
        analysis = analyze(model, images, config, mixed.bits, mixed.activation_bits, task.sensitivity(sensitivity),
                           sensitivity_options=sensitivity_options, capture=task.capture)
        if searching:
            qmodel = smallest_within_drop(model, analysis, mixed, holdout, images, quantize_with)
        else:
            qmodel = quantize_with(solve_budget(analysis, mixed))
    share = coverage(qmodel)
    if share.unquantized:
        log.warning(share.describe())
    return keep_interface_dtype(qmodel, dtype)


def _calibrated(model: nn.Module, batches: list[torch.Tensor], config: QuantConfig, task: Task,
                allocation: Allocation | None, has_data: bool, progress: bool) -> nn.Module:
    """``model`` prepared under ``config``, calibrated on ``batches``, rounded by its method and frozen."""
    qmodel = prepare(model, config, task.capture)
    if qmodel.lowbit_info.mode == "parts" and batches:
        qmodel = _parts_checked(model, qmodel, config, batches[0])
    task.before_calibration(qmodel)
    if allocation is not None:
        qmodel.lowbit_info.extra["mixed"] = allocation.to_dict()
    if not has_data and any(q.needs_calibration for _, q in activation_quantizers(qmodel)):
        raise LowbitError("calibration data is required for static activation quantization; pass data (a tensor, "
                          "a DataLoader or a dataset name), or activation_bits=None")
    covariances = calibrate_weights(qmodel, batches, config.seed)
    if config.gain_correction and config.method == "nearest":
        correct_gains(qmodel, covariances)
    calibrate_activations(qmodel, batches, progress)
    if config.method == "nearest":
        task.correct_nearest(qmodel, batches)
    if config.bias_correction and config.method == "nearest" and batches:
        correct_biases(qmodel, batches)
    method_options = make_options(config.method, config.method_options, config.seed)
    get_algorithm(config.method).run(qmodel, batches, method_options, progress)
    freeze(qmodel)
    task.finish(qmodel)
    return qmodel



def _parts_checked(model: nn.Module, qmodel: nn.Module, config: QuantConfig, x: torch.Tensor) -> nn.Module:
    """``qmodel`` if its traced parts compute what ``model`` computes on ``x``, else ``model`` swapped in place."""
    difference = parts_difference(model, qmodel, x[:PARTS_CHECK_IMAGES].to(model_device(model)))
    if difference <= PARTS_TOLERANCE:
        return qmodel
    warnings.warn(f"the submodules of {type(model).__name__} that torch.fx traced do not compute what its forward "
                  f"computes with them (largest difference {difference:.2g} of the largest output): it is "
                  "quantized by module swapping instead", stacklevel=3)
    return prepare(model, config, "swap")


def load(path: str, model: nn.Module | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a quantized model from a ``.lowbit`` file.

    Zoo models and codecs are rebuilt from the file alone; for other architectures pass an instance as
    ``model`` (its weights are ignored: only its structure is used). The file is validated before anything is
    allocated.
    """
    dtype = torch.float32
    if model is not None:
        task_of(model).setup()
        # quantized as a float32 copy (see lowbit.dtypes): the file holds that copy, and the loaded model keeps
        # the interface of the model passed, as quantize's result did
        dtype = parameter_dtype(model)
        model = as_float32(model)
    qmodel = lowbit_file.load(path, model if model is not None else rebuild, device)
    task_of(qmodel).check_loaded(qmodel)
    return keep_interface_dtype(qmodel, dtype)
