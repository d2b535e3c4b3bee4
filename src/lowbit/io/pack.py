"""Dense bit packing of unsigned integer codes (1-8 bits each) into uint8 bytes.

Layout: a little-endian bitstream. Value ``i`` occupies stream bits ``[i*bits, (i+1)*bits)``, and stream bit
``k`` is bit ``k % 8`` of byte ``k // 8``. So 2-bit codes pack 4 to a byte and 3-bit codes 8 to 3 bytes.
"""

from __future__ import annotations

import torch


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes needed for ``count`` codes of ``bits`` bits."""
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes in ``[0, 2**bits - 1]`` (any shape, integer dtype) into a flat uint8 tensor."""
    _check_bits(bits)
    flat = values.detach().reshape(-1).to(torch.int64).cpu()
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"values out of range for {bits}-bit packing")
    if bits == 8:
        return flat.to(torch.uint8)
    n = flat.numel()
    # 8 codes of `bits` bits fill exactly `bits` bytes: build one 64-bit word per group of 8, then split it
    groups = torch.nn.functional.pad(flat, (0, -n % 8)).reshape(-1, 8)
    words = (groups << (bits * torch.arange(8, dtype=torch.int64))).sum(dim=1)
    out = (words[:, None] >> (8 * torch.arange(bits, dtype=torch.int64))) & 0xFF
    return out.reshape(-1)[: packed_nbytes(n, bits)].to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` codes as a flat uint8 tensor."""
    _check_bits(bits)
    packed = packed.detach().reshape(-1).cpu()
    nbytes = packed_nbytes(count, bits)
    if packed.numel() < nbytes:
        raise ValueError(f"packed data too short: {packed.numel()} bytes for {count} {bits}-bit values")
    if bits == 8:
        return packed[:count].to(torch.uint8)
    data = packed[:nbytes].to(torch.int64)
    groups = torch.nn.functional.pad(data, (0, -nbytes % bits)).reshape(-1, bits)
    words = (groups << (8 * torch.arange(bits, dtype=torch.int64))).sum(dim=1)
    codes = (words[:, None] >> (bits * torch.arange(8, dtype=torch.int64))) & (2**bits - 1)
    return codes.reshape(-1)[:count].to(torch.uint8)
