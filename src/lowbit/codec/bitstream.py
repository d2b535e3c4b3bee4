"""The ``lowbit codec compress`` file format: a self-describing container for one coded image.

Layout (integers big-endian)::

    magic        8 bytes   b"\\x89LBCODE\\n" (the high byte and newline catch text-mode and 7-bit transfers)
    version      u16       FORMAT_VERSION
    header size  u32       bytes of the JSON header that follows
    header       JSON      codec name, quality, architecture, SHA-256 of the weights, image height and width,
                           latent shape, and the byte length of every string
    strings      bytes     the entropy coder's strings, concatenated in header order

Version 1 holds one latent size; version 2 (written only when needed) a size per latent or per channel group,
as CompressAI's latent-codec models (checkerboard context, ELIC) describe their latents.

The weights digest is what makes the file safe to decode: decoding with any other model yields garbage
without an error, so a mismatch is refused before decoding. Every field is validated on reading; any damage
is one :class:`LowbitError` line naming the file and the problem.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lowbit.codec.coding import MAX_SIDE, Encoded, shape_from_json
from lowbit.errors import LowbitError
from lowbit.io.atomic import atomic_path

MAGIC = b"\x89LBCODE\n"
FORMAT_VERSION = 1  # one latent size
NESTED_SHAPE_VERSION = 2  # a size per latent or channel group
_PREAMBLE = struct.Struct(">8sHI")
_MAX_HEADER = 1 << 20  # a header is a few hundred bytes; anything near this is damage, not a header


@dataclass(frozen=True)
class CodecId:
    """Which model wrote a bitstream: enough to reopen it, and its digest to prove it is the same one."""

    name: str  # bundled codec name, or the weights file name
    quality: int | None
    architecture: str
    sha256: str


def to_bytes(codec: CodecId, encoded: Encoded) -> bytes:
    """The file contents for ``encoded`` written by ``codec``."""
    header = {**asdict(codec), "height": encoded.height, "width": encoded.width, "shape": encoded.shape,
              "lengths": [[len(s) for s in group] for group in encoded.strings]}  # JSON writes tuples as lists
    head = json.dumps(header, separators=(",", ":")).encode()
    payload = b"".join(s for group in encoded.strings for s in group)
    version = FORMAT_VERSION if isinstance(encoded.shape, tuple) else NESTED_SHAPE_VERSION
    return _PREAMBLE.pack(MAGIC, version, len(head)) + head + payload


def write_bitstream(path: str | Path, codec: CodecId, encoded: Encoded) -> int:
    """Write the file atomically; returns its size in bytes."""
    data = to_bytes(codec, encoded)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def from_bytes(data: bytes, source: str = "bitstream") -> tuple[CodecId, Encoded]:
    """Parse and validate file contents; ``source`` names the file in errors."""
    if len(data) < _PREAMBLE.size:
        raise LowbitError(f"{source} is too short to be a lowbit codec bitstream ({len(data)} bytes); it is "
                          "truncated or not a bitstream")
    magic, version, head_size = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise LowbitError(f"{source} is not a lowbit codec bitstream (wrong magic bytes); give a file written by "
                          "lowbit codec compress")
    if version not in (FORMAT_VERSION, NESTED_SHAPE_VERSION):
        raise LowbitError(f"{source} has bitstream format version {version}, but this lowbit reads versions "
                          f"{FORMAT_VERSION} and {NESTED_SHAPE_VERSION}; decode it with the lowbit version that "
                          "wrote it")
    start = _PREAMBLE.size
    if head_size > _MAX_HEADER or start + head_size > len(data):
        raise LowbitError(f"{source} is truncated or damaged (its header runs past the end); compress the image again")
    try:
        header = json.loads(data[start:start + head_size])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LowbitError(f"{source} has a damaged header; compress the image again") from None
    codec, lengths, fields = _check_header(header, source, nested=version == NESTED_SHAPE_VERSION)
    offset, strings = start + head_size, []
    total = sum(n for group in lengths for n in group)
    if offset + total != len(data):
        what = "truncated" if offset + total > len(data) else "followed by extra bytes"
        raise LowbitError(f"{source} is {what}: its header announces {total} bytes of code, the file holds "
                          f"{len(data) - offset}; compress the image again")
    for group in lengths:
        strings.append([data[offset + sum(group[:i]):offset + sum(group[:i + 1])] for i in range(len(group))])
        offset += sum(group)
    return codec, Encoded(strings, fields["shape"], fields["height"], fields["width"])


def read_bitstream(path: str | Path) -> tuple[CodecId, Encoded]:
    """Read and validate a bitstream file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LowbitError(f"{path} cannot be read ({exc.strerror}); give a bitstream file") from None
    return from_bytes(data, str(path))


def _check_header(header: Any, source: str, nested: bool) -> tuple[CodecId, list[list[int]], dict[str, Any]]:
    def bad(what: str) -> LowbitError:
        return LowbitError(f"{source} has a damaged header ({what}); compress the image again")

    if not isinstance(header, dict):
        raise bad("not an object")
    for key, kind in (("name", str), ("architecture", str), ("sha256", str), ("height", int), ("width", int),
                      ("lengths", list)):
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise bad(f"field {key!r} missing or not a {kind.__name__}")
    quality = header.get("quality")
    if quality is not None and (not isinstance(quality, int) or isinstance(quality, bool)):
        raise bad("quality is not an integer")
    if not (0 < header["height"] <= MAX_SIDE and 0 < header["width"] <= MAX_SIDE):
        raise bad(f"image size {header['height']}x{header['width']}")
    shape = shape_from_json(header.get("shape"))  # None for anything but a latent shape, a missing one included
    if shape is None or isinstance(shape, tuple) == nested:
        raise bad("latent shape")
    lengths = header["lengths"]
    if not all(isinstance(g, list) and all(isinstance(n, int) and n >= 0 for n in g) for g in lengths):
        raise bad("string lengths")
    codec = CodecId(header["name"], quality, header["architecture"], header["sha256"])
    return codec, lengths, {**header, "shape": shape}


def check_codec(codec: CodecId, sha256: str, opened: str, source: str) -> None:
    """Refuse to decode with a model other than the one that wrote the bitstream."""
    if codec.sha256 != sha256:
        quality = f" quality {codec.quality}" if codec.quality is not None else ""
        raise LowbitError(f"{source} was written by codec {codec.name}{quality} (weights {codec.sha256[:12]}), not "
                          f"by {opened} (weights {sha256[:12]}); decode it with the codec that wrote it")
