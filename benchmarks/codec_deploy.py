"""Quantized codecs deployed: their transforms exported to ONNX and run by onnxruntime, against lowbit's own model.

For each bundled codec and rate point: the float codec (PyTorch), W8A8 round-to-nearest in lowbit (PyTorch,
simulated quantization), the same W8A8 codec with ``g_a``, ``h_a`` and ``g_s`` run from the files
``lowbit export`` writes (onnxruntime, integer convolutions where the inputs are 8-bit, transposed convolutions
in sub-pixel form included), the entropy models and ``h_s`` in lowbit on both, and onnxruntime's own dynamic int8 quantization of
the float codec's transforms as the peer. Every figure comes from real bitstreams on the
held-out photos; each variant codes one photo untimed first (sessions and caches warm).
Run: OMP_NUM_THREADS=1 python3 benchmarks/codec_deploy.py [--no-write]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import tempfile
import time
from pathlib import Path

import torch
from codec import figures
from codec_peer import int8_files_bytes, ort_dynamic_int8
from codec_quant import CALIB_CROPS, SEED, calibration_set
from report import md_table, publish, topic_page

import lowbit
from lowbit.codec import bd_rate, evaluate_codec, open_codec
from lowbit.codec.images import read_image
from lowbit.codec.onnx_transforms import export_transforms, transform_paths, with_onnx_transforms
from lowbit.codec.photos import held_out_photos
from lowbit.codec.quantize_run import calibration_crop
from lowbit.codec.zoo import BUNDLED
from lowbit.config import QuantConfig
from lowbit.deploy.openvino_check import INTEGER_PRECISIONS, compile_openvino, openvino_version
from lowbit.report import human_bytes


Form = tuple[str, torch.nn.Module, str, float]  # name, model, size of what it runs from, seconds to make it


class OpenVinoTransform(torch.nn.Module):
    """One exported transform compiled by OpenVINO's CPU plugin (float parts in f32, one thread)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.compiled, precisions = compile_openvino(path, threads=1)
        self.integer = sum(p in INTEGER_PRECISIONS for p in precisions), len(precisions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.compiled(x.numpy())[0])


def with_openvino(qcodec: torch.nn.Module, stem: Path) -> tuple[torch.nn.Module, str]:
    """A copy of ``qcodec`` whose exported transforms run in OpenVINO, and its integer/total convolutions."""
    codec = copy.deepcopy(qcodec)
    integer = total = 0
    for name, path in transform_paths(stem, qcodec).items():
        transform = OpenVinoTransform(path)
        setattr(codec, name, transform)
        integer, total = integer + transform.integer[0], total + transform.integer[1]
    return codec, f"{integer}/{total}"


def variants(codec, calib: torch.Tensor, folder: Path) -> list[Form]:
    """Every form of one rate point."""
    start = time.perf_counter()
    qcodec = lowbit.quantize(codec.model, calib, QuantConfig.from_bits(8, 8, seed=SEED))
    quantize_s = time.perf_counter() - start
    lowbit_file = lowbit.save(qcodec, folder / "codec.lowbit")
    start = time.perf_counter()
    reports = export_transforms(qcodec, folder / "codec.onnx", codec.digest)
    export_s = time.perf_counter() - start
    onnx_bytes = sum(r.bytes for r in reports.values())
    (folder / "peer").mkdir()
    start = time.perf_counter()
    peer = ort_dynamic_int8(codec.model, folder / "peer")
    peer_s = time.perf_counter() - start
    return [("FP32 (PyTorch)", codec.model, human_bytes(codec.weights_path.stat().st_size), 0.0),
            ("W8A8 lowbit (PyTorch, simulated)", qcodec, human_bytes(lowbit_file.stat().st_size), quantize_s),
            ("W8A8 ONNX transforms (onnxruntime)", with_onnx_transforms(qcodec, folder / "codec.onnx", codec.digest,
                                                                       threads=1),
             f"{human_bytes(onnx_bytes)} of transforms", export_s),
            ("onnxruntime dynamic int8 (peer)", peer, f"{human_bytes(int8_files_bytes(folder / 'peer'))} of transforms",
             peer_s)] + openvino_form(qcodec, folder / "codec.onnx", onnx_bytes)


def openvino_form(qcodec: torch.nn.Module, stem: Path, onnx_bytes: int) -> list[Form]:
    """The same ONNX files in OpenVINO, where it is installed (``pip install openvino``)."""
    if importlib.util.find_spec("openvino") is None:
        return []
    model, integer = with_openvino(qcodec, stem)
    return [(f"W8A8 ONNX transforms (OpenVINO {openvino_version()}, {integer} convolutions on integers)", model,
             f"{human_bytes(onnx_bytes)} of transforms", 0.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks/codec.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = [(p.name, read_image(p)) for p in held_out_photos()]
    rows, curves = [], {}
    for codec_name, (_, qualities) in BUNDLED.items():
        for quality in range(1, qualities + 1):
            codec = open_codec(codec_name, quality)
            with tempfile.TemporaryDirectory() as tmp:
                for name, model, size, seconds in variants(codec, calibration_set(codec.stride), Path(tmp)):
                    evaluate_codec(model, images[:1], codec.stride)  # warm-up, untimed
                    s = evaluate_codec(model, images, codec.stride).summary()
                    curves.setdefault((codec_name, name), []).append((s["bpp"], s["psnr"]))
                    rows.append([f"{codec_name} q{quality}", name,
                                 *figures(s["bpp"], s["psnr"], s["ms_ssim"], s["encode_seconds"], s["decode_seconds"]),
                                 size, f"{seconds:.1f}"])
                    print(rows[-1], flush=True)
    bd_rows = []
    crops = ", ".join(f"{calibration_crop(open_codec(name, 1).stride)} pixels for {name}" for name in BUNDLED)
    for (codec_name, name), points in curves.items():
        if not name.startswith("FP32"):
            reference = curves[codec_name, "FP32 (PyTorch)"]
            lowbit_points = curves[codec_name, "W8A8 lowbit (PyTorch, simulated)"]
            bd_rows.append([codec_name, name,
                            f"{bd_rate(*zip(*reference), *zip(*points)):+.2f}",
                            "-" if "lowbit" in name or "peer" in name
                            else f"{bd_rate(*zip(*lowbit_points), *zip(*points)):+.2f}"])
    body = "\n\n".join([
        md_table(["codec", "form", "bpp", "PSNR dB", "MS-SSIM", "encode ms", "decode ms", "runs from",
                  "quantize / export s"], rows),
        "BD-rate (Bjøntegaard, PSNR, PCHIP through the three rate points), against FP32 and against lowbit's own "
        "W8A8 model:",
        md_table(["codec", "form", "BD-rate % vs FP32", "BD-rate % vs lowbit W8A8"], bd_rows),
        f"Calibration: {CALIB_CROPS} random crops ({crops}; seed {SEED}) of the training photos; evaluation: "
        "the four held-out photos, real bitstreams, one thread for PyTorch and for onnxruntime, times per photo "
        "after one untimed photo. The onnxruntime form runs `g_a`, `h_a` and `g_s` from the files `lowbit export` "
        "writes for the W8A8 `.lowbit` file (convolutions on integer kernels, transposed convolutions in "
        "sub-pixel form included, whose zero taps make `g_s`'s file larger; GDN in float on the dequantized "
        "weights); the entropy models and the hyperprior's `h_s` run in lowbit, so "
        "its bitstreams are the ones lowbit's model reads. The peer, onnxruntime's `quantize_dynamic` (int8 weights "
        "per channel, activations quantized per call), runs all four transforms of the same float codec in "
        "onnxruntime, `h_s` included; it has no ConvTranspose, so its `g_s` and `h_s` upsample in float. Runs "
        "from: the bundled float weights file, the `.lowbit` file, or the ONNX transform files (the entropy "
        "models then come from the `.lowbit` file or the float codec). Where OpenVINO is installed, the same ONNX "
        "files also run in its CPU plugin (float parts in f32), inside the same codec.",
    ])
    publish("codec-deploy", "Quantized codecs in onnxruntime: exported transforms against lowbit's model", body,
            topic_page("codec"), write=not args.no_write)


if __name__ == "__main__":
    main()
