import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.io.pack import pack_bits, packed_nbytes, unpack_bits


@settings(deadline=None, max_examples=200)
@given(st.integers(1, 8), st.integers(0, 700), st.integers(0, 2**31 - 1))
def test_round_trip_and_exact_size(bits, n, seed):
    values = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(seed))
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(n, bits) == (n * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, n).long(), values)


def test_known_layouts():
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    assert pack_bits(torch.tensor([1, 15]), 4).tolist() == [0xF1]
    # 3-bit: 8 codes in 3 bytes, little-endian stream
    codes = torch.tensor([7, 0, 0, 0, 0, 0, 0, 5])
    assert pack_bits(codes, 3).tolist() == [0b00000111, 0, 0b10100000]


def test_out_of_range_and_short_input_raise():
    with pytest.raises(ValueError):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError):
        pack_bits(torch.tensor([-1]), 4)
    with pytest.raises(ValueError):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 4, 3)
