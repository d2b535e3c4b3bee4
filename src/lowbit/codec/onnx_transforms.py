"""A quantized image codec's transforms as ONNX files (QDQ form), and the codec run with them in onnxruntime.

The analysis transform ``g_a``, a hyperprior's hyper-analysis ``h_a`` and the synthesis transform ``g_s`` become
one file each, for any batch and any image size (a multiple of the transform's downsampling, which the codec's
padding to its stride gives). onnxruntime runs their convolutions on integer kernels where the inputs are on
8-bit static grids, ``g_s``'s transposed convolutions included (exported as sub-pixel convolutions:
:mod:`lowbit.deploy.subpixel`). The entropy models stay in lowbit, and so does a hyperprior's ``h_s``: it computes the
scales that encoder and decoder must agree on bit for bit, which lowbit does in exact integer arithmetic and
onnxruntime's float requantization does not promise. A codec whose transforms run from these files therefore
writes the bitstreams that lowbit's own codec reads, and reads the ones it writes.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from lowbit.deploy.export_report import ExportReport
from lowbit.errors import LowbitError

TRANSFORMS = ("g_a", "h_a", "g_s")
DIGEST_KEY, TRANSFORM_KEY = "lowbit.codec_sha256", "lowbit.transform"


def transform_paths(stem: str | os.PathLike, codec: nn.Module) -> dict[str, Path]:
    """Where each of the codec's exported transforms goes: ``STEM.g_a.onnx`` and so on, beside ``stem``."""
    stem = Path(stem)
    base = stem.with_suffix("") if stem.suffix == ".onnx" else stem
    return {name: base.with_name(f"{base.name}.{name}.onnx") for name in TRANSFORMS if hasattr(codec, name)}


def downsampling(transform: nn.Module) -> int:
    """How many input pixels one output position of ``transform`` spans per side (its strided convolutions'
    strides multiplied; a synthesis transform, which only upsamples, gives 1)."""
    factor = 1
    for m in transform.modules():
        if isinstance(m, nn.Conv2d):
            factor *= m.stride[0]
    return factor


def input_channels(transform: nn.Module) -> int:
    """The channels a transform reads (its first convolution's)."""
    first = next((m for m in transform.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))), None)
    if first is None:
        raise LowbitError("a codec transform without a convolution cannot be exported")
    return first.in_channels


def export_transforms(qcodec: nn.Module, stem: str | os.PathLike, digest: str) -> dict[str, ExportReport]:
    """Write each transform of the quantized ``qcodec`` (see :func:`transform_paths`), tagged with the codec's
    ``digest`` so that the files are only ever run with the codec they came from."""
    from lowbit.deploy.onnx_export import export

    reports = {}
    for name, path in transform_paths(stem, qcodec).items():
        transform = getattr(qcodec, name)
        multiple = downsampling(transform)
        example = torch.rand(1, input_channels(transform), 2 * multiple, 2 * multiple,
                             generator=torch.Generator().manual_seed(0))
        reports[name] = export(transform, path, example, spatial_multiple=multiple,
                               metadata={DIGEST_KEY: digest, TRANSFORM_KEY: name})
    return reports


class OnnxTransform(nn.Module):
    """One transform run by onnxruntime from its file (float32 in and out)."""

    def __init__(self, path: Path, threads: int | None = None, provider: str = "cpu") -> None:
        from lowbit.deploy.runtime import open_session

        super().__init__()
        self.session = open_session(path, threads, provider)
        self.input_name = self.session.get_inputs()[0].name
        self.tags = self.session.get_modelmeta().custom_metadata_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(None, {self.input_name: x.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(out).to(x.device)


def with_onnx_transforms(qcodec: nn.Module, stem: str | os.PathLike, digest: str, threads: int | None = None,
                         provider: str = "cpu") -> nn.Module:
    """A copy of ``qcodec`` whose transforms run from the files :func:`export_transforms` wrote at ``stem``;
    a file that is missing, not ONNX, or tagged for another codec or transform is refused in one line."""
    codec = copy.deepcopy(qcodec)
    for name, path in transform_paths(stem, qcodec).items():
        if not path.is_file():
            raise LowbitError(f"{path} not found; write the codec's ONNX transforms with `lowbit export` first")
        transform = OnnxTransform(path, threads, provider)
        if transform.tags.get(TRANSFORM_KEY) != name or transform.tags.get(DIGEST_KEY) != digest:
            raise LowbitError(f"{path} is not this codec's {name} (it was exported from another model or is another "
                              "transform); export this codec's transforms with `lowbit export`")
        setattr(codec, name, transform)
    return codec
