"""Uniform quantization math as pure functions.

Conventions: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` and ``x_hat = (q - zero_point) * scale``.
Symmetric specs use a signed grid and a zero point of 0; affine specs use an unsigned grid. ``scale`` and
``zero_point`` broadcast against ``x`` (see :func:`channel_view`). Rounding is half-to-even (``torch.round``).
"""

from __future__ import annotations

import torch

# Smallest scale we ever produce: a constant (zero-range) tensor must not yield 0, NaN or Inf scales.
MIN_SCALE = 1e-8
# float16's normal range: a value inside it rounds to float16 with a relative error of at most 2**-11
FLOAT16_NORMAL = (2.0**-14, 65504.0)


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer grid of ``bits``: signed ``[-2^(b-1), 2^(b-1)-1]`` when symmetric, else ``[0, 2^b - 1]``."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def channel_view(t: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """Reshape a per-channel vector so that it broadcasts along ``axis`` of an ``ndim``-dimensional tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def choose_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point whose grid covers ``[lo, hi]`` (extended to include 0 so zero is exact)."""
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = (amax / ((qmax - qmin) / 2)).clamp_min(MIN_SCALE)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(MIN_SCALE)
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale, zero_point


def float16_scales(scale: torch.Tensor, idle: torch.Tensor | None = None) -> torch.Tensor:
    """``scale`` rounded to the nearest float16 number wherever float16 holds it to full precision (its normal
    range); elsewhere unchanged. ``idle`` marks channels whose codes are all at the zero point: their scale
    scales nothing, so one below that range is raised to its bottom first. A file can then store the scales in
    two bytes each, as the 4-bit formats runtimes read do."""
    scale = scale.detach().float()
    low, high = FLOAT16_NORMAL
    if idle is not None:
        scale = torch.where(idle.reshape(scale.shape) & (scale < low), torch.full_like(scale, low), scale)
    return torch.where((scale >= low) & (scale <= high), scale.half().float(), scale)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Integer codes of ``x`` (as int32)."""
    return (torch.round(x / scale) + zero_point).clamp(qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Real values of integer codes. The one place codes become floats, so save/load is bit-exact."""
    return (q.float() - zero_point.float()) * scale


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize-dequantize with straight-through rounding.

    Gradients reach ``x`` inside the clipping range and ``scale`` everywhere (as in LSQ), which is what
    the learned-rounding and step-size methods need.
    """
    zp = zero_point.to(x.dtype)
    q = torch.clamp(round_ste(x / scale) + zp, qmin, qmax)
    return (q - zp) * scale


def fake_quantize_no_grad(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                          qmax: int) -> torch.Tensor:
    """:func:`fake_quantize`'s values in four passes over ``x`` (one allocation) instead of eight, for inference.

    ``clamp(round(v) + zp, qmin, qmax) - zp`` equals ``clamp(round(v), qmin - zp, qmax - zp)`` on integers,
    so the zero point never touches the tensor itself. A single zero point on the CPU becomes a Python number
    (clamping to scalars is faster, and reading it costs no device synchronization there).
    """
    zp = zero_point.to(x.dtype)
    if zp.numel() == 1 and zp.device.type == "cpu":
        zp = zp.item()
    return torch.div(x, scale).round_().clamp_(qmin - zp, qmax - zp).mul_(scale)


def fake_quantize_fp16(x: torch.Tensor) -> torch.Tensor:
    """Round to IEEE half precision and back (values beyond the fp16 range saturate instead of becoming inf)."""
    limit = torch.finfo(torch.float16).max
    return x.clamp(-limit, limit).to(torch.float16).to(x.dtype)


def quantization_error(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                       reduce_dims: tuple[int, ...] | None = None, p: float = 2.0) -> torch.Tensor:
    """Mean ``|x - fq(x)|^p``, over all elements or over ``reduce_dims`` (used by the MSE observer)."""
    with torch.no_grad():
        err = (fake_quantize(x, scale, zero_point, qmin, qmax) - x).abs().pow(p)
        return err.mean() if reduce_dims is None else err.mean(dim=reduce_dims)


# Values per block in grid_errors. On a CPU, 2 MB of float32 stays in cache between the passes over it, and each
# operation is big enough that splitting it across threads (a synchronization each time) pays. On a GPU the limit
# only bounds memory: fewer, larger launches are faster.
CPU_BLOCK = 1 << 19
GPU_BLOCK = 1 << 24


def grid_errors(rows: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, qmin: int, qmax: int,
                block_elements: int | None = None) -> torch.Tensor:
    """Summed squared quantization error of every row of ``rows`` on many candidate grids at once.

    ``rows`` is ``(C, K)``; ``scale`` and ``zero_point`` are ``(N, C)``, N candidate grids per row (``None``:
    every zero point is 0, as on symmetric grids); the result is ``(N, C)``. The errors are those of
    :func:`fake_quantize`, computed without it: a range search passes over every value dozens of times, so the
    values go through in blocks of at most ``block_elements`` (``N`` candidates times some rows and columns), in
    place in one reused buffer. On a CPU a block stays in cache across its six passes instead of each pass
    streaming whole tensors through memory.
    """
    if block_elements is None:
        block_elements = GPU_BLOCK if rows.is_cuda else CPU_BLOCK
    n_cand, n_rows = scale.shape
    cols = max(1, min(rows.shape[1], block_elements // n_cand))
    step = max(1, block_elements // (n_cand * cols))
    scale = scale.float().unsqueeze(-1)
    lower, upper = _code_bounds(zero_point, qmin, qmax)
    buffer = torch.empty(n_cand * step * cols, dtype=torch.float32, device=rows.device)
    out = torch.zeros(n_cand, n_rows, dtype=torch.float32, device=rows.device)
    with torch.no_grad():
        for r in range(0, n_rows, step):
            bounds = [b if isinstance(b, float) else b[:, r:r + step] for b in (lower, upper)]
            for c in range(0, rows.shape[1], cols):
                block = rows[r:r + step, c:c + cols]
                err = buffer[:n_cand * block.numel()].view(n_cand, *block.shape)
                out[:, r:r + step] += _block_errors(block, scale[:, r:r + step], *bounds, err)
    return out


def _code_bounds(zero_point: torch.Tensor | None, qmin: int, qmax: int) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """Clamping bounds of ``round(x / scale)``: ``clamp(round(v) + zp, qmin, qmax) - zp`` on integers is
    ``clamp(round(v), qmin - zp, qmax - zp)``. Plain numbers without zero points (symmetric grids), since
    clamping to numbers is several times faster than to tensors."""
    if zero_point is None:
        return float(qmin), float(qmax)
    zp = zero_point.float().unsqueeze(-1)
    return qmin - zp, qmax - zp


def _block_errors(block: torch.Tensor, scale: torch.Tensor, lower: float | torch.Tensor, upper: float | torch.Tensor,
                  err: torch.Tensor) -> torch.Tensor:
    """Squared error summed along each row of ``block`` (``(R, K)``) for every candidate grid (``scale`` is
    ``(N, R, 1)``), computed in ``err`` (``(N, R, K)``)."""
    torch.div(block, scale, out=err).round_()
    if isinstance(lower, float):
        err.clamp_(lower, upper)
    else:  # clamp_ with tensor bounds takes a slow path
        torch.maximum(err, lower, out=err)
        torch.minimum(err, upper, out=err)
    err.mul_(scale).sub_(block)
    return torch.linalg.vecdot(err, err)
