"""Quantization-aware fine-tuning (QAT) of quantized models: options, the training loop, checkpoints."""

from lowbit.qat.loop import finetune
from lowbit.qat.options import FinetuneOptions

__all__ = ["finetune", "FinetuneOptions"]
