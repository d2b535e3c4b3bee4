"""Models kept in float16, bfloat16 or float64: quantized in float32, used in their own dtype.

Observers, range searches and learned rounding need float32 arithmetic (half precision cannot hold the
squared errors they compare, and rounds the grid's step sizes). A model in another floating dtype is therefore
quantized as a float32 copy; the quantized model takes and returns tensors of the original dtype, so it drops
into the code that used the original. Its weights are integer codes either way.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lowbit.errors import LowbitError


def parameter_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 when it has none); mixed dtypes are refused."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) > 1:
        raise LowbitError(f"the model mixes parameter dtypes {sorted(map(str, dtypes))}; convert it to one "
                          "(model.float()) before quantizing")
    return dtypes.pop() if dtypes else torch.float32


def as_float32(model: nn.Module) -> nn.Module:
    """``model`` itself when it is float32, else a float32 copy (the caller's model is left as it is)."""
    return model if parameter_dtype(model) == torch.float32 else copy.deepcopy(model).float()


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def keep_interface_dtype(qmodel: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Make the float32 ``qmodel`` accept and return ``dtype`` tensors, like the model it came from."""
    if dtype != torch.float32:
        qmodel.register_forward_pre_hook(lambda module, args: _cast(args, torch.float32))
        qmodel.register_forward_hook(lambda module, args, output: _cast(output, dtype))
    return qmodel
