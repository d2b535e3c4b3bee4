"""Where block reconstruction keeps its cached block inputs and float targets.

Three tensors of ``n_images x block output`` are alive at a time (quantized inputs, float inputs, targets).
They go on the model's GPU when they fit in a quarter of its free memory, in CPU memory when they fit in half of
the available RAM, and otherwise in memory-mapped files in a temporary folder, so that ResNet-sized models with
thousands of 224 x 224 calibration images run on machines with little memory. Each file is unlinked as soon as
it is mapped: the space goes back when the tensor is freed, even if the process is killed.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from typing import Literal

import torch

from lowbit.errors import LowbitError

CacheSetting = Literal["auto", "device", "cpu", "disk"]
CACHE_SETTINGS = ("auto", "device", "cpu", "disk")
_LIVE_TENSORS = 3


def check_cache_setting(setting: str) -> None:
    if setting not in CACHE_SETTINGS:
        raise LowbitError(f"cache must be one of {', '.join(CACHE_SETTINGS)}, got {setting!r}")


def available_ram() -> int:
    """Bytes of physical memory currently available (free pages; Linux and macOS)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: assume it fits


class ActivationCache:
    """Allocates the cached tensors of one reconstruction run on the chosen storage."""

    def __init__(self, kind: Literal["device", "cpu", "disk"], device: torch.device,
                 directory: str | None = None) -> None:
        self.kind, self.device = kind, device
        self.directory = directory
        self._names = itertools.count()

    @classmethod
    def choose(cls, setting: CacheSetting, model_device: torch.device, nbytes_per_tensor: int,
               directory: str | None = None) -> "ActivationCache":
        """The storage ``setting`` asks for; ``auto`` takes the fastest one the tensors fit in."""
        check_cache_setting(setting)
        need = nbytes_per_tensor * _LIVE_TENSORS
        if setting == "auto":
            if model_device.type == "cuda" and need < torch.cuda.mem_get_info(model_device)[0] // 4:
                setting = "device"
            else:
                setting = "cpu" if need < available_ram() // 2 else "disk"
        if setting == "device":
            return cls("device", model_device)
        if setting == "cpu":
            return cls("cpu", torch.device("cpu"))
        return cls("disk", torch.device("cpu"), directory or tempfile.gettempdir())

    def empty(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialized tensor on this storage."""
        if self.kind != "disk":
            return torch.empty(shape, dtype=dtype, device=self.device)
        numel = math.prod(shape)
        path = os.path.join(self.directory, f"lowbit-cache-{os.getpid()}-{next(self._names)}.bin")
        try:
            mapped = torch.from_file(path, shared=True, size=max(numel, 1), dtype=dtype)
        except RuntimeError as exc:
            raise LowbitError(f"could not map a {numel * dtype.itemsize / 2**30:.1f} GiB cache file in "
                              f"{self.directory} ({exc}); free disk space or set TMPDIR") from None
        finally:
            if os.path.exists(path):
                os.unlink(path)
        return mapped[:numel].view(shape)

    def copy(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` moved onto this storage."""
        out = self.empty(x.shape, x.dtype)
        out.copy_(x)
        return out

    def cat(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """``pieces`` joined along the first dimension on this storage, without a full-size copy in RAM
        (``torch.cat`` would allocate its result in memory even when the cache is on disk)."""
        out = self.empty((sum(len(p) for p in pieces), *pieces[0].shape[1:]), pieces[0].dtype)
        start = 0
        for p in pieces:
            out[start : start + len(p)].copy_(p)
            start += len(p)
        return out
