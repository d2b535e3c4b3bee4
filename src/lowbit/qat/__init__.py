"""Quantization-aware fine-tuning (QAT) of quantized models: options, the training loop, checkpoints."""

from lowbit.qat.finetune import finetune
from lowbit.qat.options import FinetuneOptions

__all__ = ["finetune", "FinetuneOptions"]
