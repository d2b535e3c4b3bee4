"""The bitstream file: round trip, and refusal of damaged, foreign and mismatched files."""

from __future__ import annotations

import json
import struct

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


def _stream_with_latent_codec():
    """A bitstream of CompressAI's latent-codec model with a checkerboard context: a latent size per latent."""
    model = prepare(tiny_codec(arch="cheng2020-anchor-checkerboard"))
    encoded = encode(model, torch.rand(3, 19, 40), 64)
    codec = CodecId("tiny", None, "cheng2020-anchor-checkerboard", weights_digest(model))
    return model, encoded, to_bytes(codec, encoded)


def test_a_latent_size_per_latent_round_trips_in_format_version_2():
    model, encoded, data = _stream_with_latent_codec()
    assert isinstance(encoded.shape, dict) and data[8:10] == b"\x00\x02"
    _, read = from_bytes(data)
    assert read == encoded and torch.equal(decode(model, read), decode(model, encoded))
    assert _stream()[3][8:10] == b"\x00\x01"  # one latent size: the format older versions read


@pytest.mark.parametrize("shape", [{"y": [0, 1, 1]}, {"y": "x"}, [[[[[1]]]]], [1, 2], {}, {"y": [1, 2, 3, 4, 5]}])
def test_a_damaged_latent_size_is_refused(shape):
    data = _stream_with_latent_codec()[2]
    size = struct.unpack_from(">I", data, 10)[0]
    header = {**json.loads(data[14:14 + size]), "shape": shape}  # a consistent file with only the shape edited
    head = json.dumps(header).encode()
    _refused(data[:10] + struct.pack(">I", len(head)) + head + data[14 + size:], r"damaged header \(latent shape\)")
