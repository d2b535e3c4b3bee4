"""The bitstream file: round trip, and refusal of damaged, foreign and mismatched files."""

from __future__ import annotations

import pytest
import torch
from codec_helpers import tiny_codec

from lowbit.codec.bitstream import MAGIC, CodecId, check_codec, from_bytes, to_bytes
from lowbit.codec.coding import decode, encode, prepare
from lowbit.codec.zoo import weights_digest
from lowbit.errors import LowbitError


def _stream():
    model = prepare(tiny_codec())
    x = torch.rand(3, 19, 40)
    encoded = encode(model, x, 16)
    codec = CodecId("tiny", 2, "bmshj2018-factorized-small", weights_digest(model))
    return model, encoded, codec, to_bytes(codec, encoded)


def test_round_trip_preserves_everything():
    model, encoded, codec, data = _stream()
    assert data.startswith(MAGIC)
    codec2, encoded2 = from_bytes(data)
    assert codec2 == codec
    assert encoded2 == encoded
    assert torch.equal(decode(model, encoded2), decode(model, encoded))


def _refused(data: bytes, match: str) -> None:
    with pytest.raises(LowbitError, match=match) as info:
        from_bytes(data, "x.bits")
    assert "\n" not in str(info.value) and "x.bits" in str(info.value)


@pytest.mark.parametrize("keep", [3, 20, -1])
def test_truncated(keep):
    data = _stream()[3]
    _refused(data[:keep], "truncated|too short")


def test_extra_bytes_and_wrong_magic_and_version():
    data = _stream()[3]
    _refused(data + b"\0", "extra bytes")
    _refused(b"GIF89a!!" + data[8:], "wrong magic")
    _refused(data[:8] + b"\x00\x07" + data[10:], "format version 7")


def test_damaged_header():
    data = _stream()[3]
    start = data.index(b'"height":')
    _refused(data[:start] + b'"height":-1' + data[start + len(b'"height":19'):], "damaged header")


def test_bitstream_from_another_model_is_refused():
    _, _, codec, _ = _stream()
    other = weights_digest(tiny_codec(seed=1))
    assert other != codec.sha256
    with pytest.raises(LowbitError, match="written by codec tiny quality 2"):
        check_codec(codec, other, "other", "x.bits")
    check_codec(codec, codec.sha256, "tiny", "x.bits")
