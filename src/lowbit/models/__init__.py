"""Architectures lowbit knows by name, and checkpoint loading."""

from lowbit.models.checkpoint import load_checkpoint, read_state_dict
from lowbit.models.zoo import (MODEL_NAMES, build_model, bundled_checkpoint, default_input_shape,
                               default_normalization, rebuild)

__all__ = ["MODEL_NAMES", "build_model", "rebuild", "bundled_checkpoint", "default_input_shape", "default_normalization",
           "load_checkpoint", "read_state_dict"]
