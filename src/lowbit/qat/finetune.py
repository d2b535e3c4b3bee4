"""``lowbit.finetune``: quantization-aware fine-tuning of a quantized model, from start or from a checkpoint.

The training itself is :class:`lowbit.qat.loop.Trainer`'s; checkpoints are :mod:`lowbit.qat.checkpoint`'s. This
module ties them together, so that neither imports the other's user.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.codec.task import is_codec
from lowbit.device import model_device
from lowbit.errors import LowbitError
from lowbit.qat.checkpoint import restore, write_checkpoint
from lowbit.qat.data import split
from lowbit.qat.loop import Trainer
from lowbit.qat.options import FinetuneOptions
from lowbit.qat.trainable import copy_quantized, float_teacher, weight_quantizers

log = logging.getLogger(__name__)
# Below this width a model's own weights, dequantized, are too far from the float ones to teach: distilling
# from them pulls a 2-bit model towards its own rounding error.
TEACHER_MIN_BITS = 8


def _options(options: FinetuneOptions | None, overrides: dict[str, Any]) -> FinetuneOptions:
    if options is None:
        return FinetuneOptions.from_dict(overrides)
    return FinetuneOptions.from_dict({**options.to_dict(), **overrides}) if overrides else options


def _check_quantized(qmodel: nn.Module) -> None:
    if getattr(qmodel, "lowbit_info", None) is None:
        raise LowbitError("finetune needs a quantized model (from lowbit.quantize or lowbit.load); quantize it first")
    if is_codec(qmodel):
        raise LowbitError("lowbit.finetune trains classifiers; fine-tune a codec with lowbit.codec.finetune_codec "
                          "(CLI: lowbit codec finetune)")


def warn_about_own_teacher(qmodel: nn.Module) -> None:
    """Say so when distillation falls back on ``qmodel`` itself as the teacher while its weights are narrow codes."""
    widths = [int(q.spec.bits) for q in weight_quantizers(qmodel) if isinstance(q.spec.bits, int)]
    if widths and min(widths) < TEACHER_MIN_BITS:
        log.warning("distilling from the quantized model itself with its quantizers off: its weights are the "
                    "%d-bit codes, a poor teacher; pass the float model (teacher=..., CLI --teacher-checkpoint)",
                    min(widths))


def finetune(qmodel: nn.Module, train_data: Any, options: FinetuneOptions | None = None, *,
             teacher: nn.Module | None = None, checkpoint: str | Path | None = None,
             resume: str | Path | None = None, progress: bool = False, device: str | torch.device | None = None,
             **kwargs: Any) -> nn.Module:
    """Quantization-aware fine-tuning: a better quantized model with the same grids' widths, frozen again.

    ``train_data`` takes the forms calibration data takes: a Dataset or DataLoader of ``(input, label)`` pairs
    (cross-entropy), or of inputs alone (distillation from ``teacher``), a tensor, ``(inputs, labels)``, a list
    of batches or a dataset name (its training split); a DataLoader's dataset and collate function are used,
    in ``batch_size`` batches of a seeded order. Images held out from it (``val_fraction``) choose the epoch
    returned, so no test data is needed or wanted. ``teacher`` is the float model to distill from: when given,
    the model learns its outputs even where labels exist (a teacher passed is a teacher used; the held-out
    images still pick the epoch by top-1 against the labels). Without one, distillation (``distill=True`` or unlabelled data) falls back on ``qmodel`` with every
    quantizer switched off (for a model loaded from a file, its weights are then the dequantized codes: the
    file stores no float weights). Options come as :class:`FinetuneOptions` or keywords
    (``epochs=3``, ``lr=1e-4``, ``act_range_momentum=0.99``, ...).

    ``checkpoint``: a ``.lowbit`` file written atomically after every epoch (and every ``checkpoint_every``
    steps), beside a ``.state.safetensors`` file with the float weights and optimizer state. ``resume``: such a
    checkpoint to continue from (``qmodel`` is then the model the run started from). The returned model records
    the run (options, per-epoch history, the epoch kept) in ``lowbit_info.extra["finetune"]``, which
    :func:`lowbit.save` stores as provenance. ``qmodel`` itself is left unchanged.
    """
    _check_quantized(qmodel)
    options = _options(options, kwargs)
    data = split(train_data, options)
    device = torch.device(device) if device is not None else model_device(qmodel)
    torch.manual_seed(options.seed)
    use_teacher = options.distill or not data.labelled or teacher is not None
    teacher_kind = "given" if teacher is not None else "quantizers off"
    if use_teacher and teacher is None:
        teacher = float_teacher(qmodel)
        warn_about_own_teacher(qmodel)
    teacher = teacher.to(device).eval() if use_teacher and teacher is not None else None
    model = copy_quantized(qmodel).to(device)
    trainer = Trainer(model, teacher, data, options, device)
    trainer.summary = {"teacher": teacher_kind if teacher is not None else None}
    if resume is not None:
        restore(trainer, Path(resume))
    if checkpoint is not None:
        trainer.save_checkpoint = lambda: write_checkpoint(trainer, Path(checkpoint))
    trainer.fit(progress)
    model.lowbit_info.extra.pop("quant_metrics", None)  # they measured the model before fine-tuning
    model.lowbit_info.extra["finetune"] = trainer.record()
    return model
