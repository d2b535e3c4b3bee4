"""Codecs with a mean-scale hyperprior and with an autoregressive context model, quantized.

CompressAI's mean-scale hyperprior (``mbt2018-mean``) and joint autoregressive codec (``mbt2018``), 64 channels,
are trained here at the bundled hyperprior's three lambdas: their analysis, synthesis and hyper-analysis
transforms start from the bundled hyperprior's at the same rate point (the same shapes), the rest from scratch,
then the bundled recipe's steps train the whole codec on the same training photos. Each is then quantized (INT8
light, INT8 entropy coding only, W8A8 static) and every variant codes the held-out photos from real bitstreams:
bpp, PSNR, times, BD-rate against FP32, and whether the entropy parameters (the side information's means and
scales, and the context model's) are computed in exact integers, so that decoding is the same on any machine.
Run: OMP_NUM_THREADS=2 python3 benchmarks/codec_context.py [--steps 600] [--no-write]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from codec import figures
from codec_peer import int8_files_bytes, ort_dynamic_int8
from codec_quant import CALIB_CROPS, CROP, LIGHT, SEED, bd_shown, training_images
from report import md_table, publish, topic_page

import lowbit
from lowbit.codec import evaluate_codec, open_codec
from lowbit.codec.architectures import codec_architecture
from lowbit.codec.autoregressive import has_exact_context
from lowbit.codec.exact import has_exact_path
from lowbit.codec.images import read_image
from lowbit.codec.photos import held_out_photos, training_photos
from lowbit.codec.quantize_run import calibration_crops
from lowbit.codec.task import scope_overrides
from lowbit.codec.train import CodecTrainOptions, train_codec
from lowbit.config import QuantConfig
from lowbit.report import human_bytes

ARCHITECTURES = ("mbt2018-mean-small", "mbt2018-small")
STARTING_POINT = "codec-hyperprior-small"  # its g_a, g_s and h_a have the shapes of both architectures'
SHARED = ("g_a.", "g_s.", "h_a.")
VARIANTS = {"FP32": None, "INT8 light (W8, A16 dynamic)": (LIGHT, "all"), "INT8 entropy only": (LIGHT, "entropy"),
            "W8A8 static": ({"weights_bits": 8, "activation_bits": 8}, "all")}


def trained(arch: str, quality: int, steps: int) -> tuple[torch.nn.Module, float, float]:
    """The architecture trained at the bundled hyperprior's rate point ``quality``, its lambda and seconds."""
    start = open_codec(STARTING_POINT, quality)
    options = start.recipe["options"]
    model = codec_architecture(arch).create()
    shared = {k: v.float() for k, v in start.model.state_dict().items() if k.startswith(SHARED)}
    missing = [k for k in shared if k not in model.state_dict() or model.state_dict()[k].shape != shared[k].shape]
    if missing:
        raise SystemExit(f"{arch} does not share {missing[:3]} with {STARTING_POINT}")
    model.load_state_dict(shared, strict=False)
    began = time.perf_counter()
    train_codec(model, training_images(), CodecTrainOptions(
        lmbda=options["lmbda"], steps=steps, crop=options["crop"], batch_size=options["batch_size"],
        lr=options["lr"], final_lr=options["final_lr"], clip_norm=options["clip_norm"], seed=options["seed"]),
        quiet=True)
    model.eval().update(force=True)
    return model, options["lmbda"], time.perf_counter() - began


def exact(model: torch.nn.Module) -> str:
    """Which entropy parameters the model computes in exact integers."""
    if has_exact_context(model):
        return "yes (side information and context model)"
    return "yes (side information)" if has_exact_path(model) else "no (float)"


def run(arch: str, steps: int, images, calib: torch.Tensor) -> str:
    rows, curves, notes = [], {}, []
    for quality in (1, 2, 3):
        model, lmbda, seconds = trained(arch, quality, steps)
        notes.append(f"q{quality}: lambda {lmbda}, {steps} steps in {seconds:.0f} s")
        reference = None
        variants = [*VARIANTS.items(), ("onnxruntime dynamic int8 (peer)", "peer")]
        for name, setting in variants:
            with tempfile.TemporaryDirectory() as tmp:
                began = time.perf_counter()
                if setting is None:
                    codec, size = model, None
                elif setting == "peer":
                    codec = ort_dynamic_int8(model, Path(tmp))
                    size = int8_files_bytes(Path(tmp))
                else:
                    kw, scope = setting
                    kw = dict(kw)
                    config = QuantConfig.from_bits(kw.pop("weights_bits"), kw.pop("activation_bits"),
                                                   overrides=scope_overrides(model, scope), seed=SEED, **kw)
                    codec = lowbit.quantize(copy.deepcopy(model), calib, config)
                    size = lowbit.save(codec, Path(tmp) / "c.lowbit").stat().st_size
                quantize_s = time.perf_counter() - began
                s = evaluate_codec(codec, images, codec_architecture(arch).stride).summary()
            reference = reference or s
            curves.setdefault(name, []).append((s["bpp"], s["psnr"]))
            rows.append([f"{arch} q{quality}", name,
                         *figures(s["bpp"], s["psnr"], s["ms_ssim"], s["encode_seconds"], s["decode_seconds"]),
                         f"{100 * (s['bpp'] / reference['bpp'] - 1):+.2f}", f"{s['psnr'] - reference['psnr']:+.3f}",
                         "-" if size is None else human_bytes(size), "-" if setting is None else f"{quantize_s:.1f}",
                         "-" if setting in (None, "peer") else exact(codec)])
            print(rows[-1], flush=True)
    bd_rows = [[arch, name, bd_shown(curves["FP32"], points)] for name, points in curves.items() if name != "FP32"]
    return "\n\n".join([
        md_table(["codec", "variant", "bpp", "PSNR dB", "MS-SSIM", "encode ms", "decode ms", "bpp vs FP32 %",
                  "PSNR vs FP32 dB", "file", "quantize s", "entropy parameters in exact integers"], rows),
        md_table(["codec", "variant", "BD-rate % vs FP32"], bd_rows),
        f"Training ({arch}, from the bundled hyperprior's transforms): " + "; ".join(notes) + ".",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps per rate point (batches of 8 crops)")
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks/codec.md alone")
    args = parser.parse_args()
    images = [(p.name, read_image(p)) for p in held_out_photos()]
    calib = calibration_crops(training_photos(), CALIB_CROPS, CROP, SEED)
    sections = [run(arch, args.steps, images, calib) for arch in args.architectures]
    body = "\n\n".join(sections + [
        f"Calibration: {CALIB_CROPS} random {CROP}x{CROP} crops (seed {SEED}) of the training photos; evaluation: "
        "the four held-out photos, real bitstreams. The autoregressive codec codes its latents one position at a "
        "time in CompressAI's loops, which is most of its encode and decode time. Files: the `.lowbit` file for "
        "lowbit's variants, the quantized ONNX transforms for the peer (its entropy model, context model included, "
        "is the float codec's, not counted). INT8 entropy only quantizes h_a, h_s and, in the autoregressive "
        "codec, the context model and the entropy-parameter network, and keeps the transforms float. The last "
        "column says which entropy parameters lowbit computes in exact integers (the same on any machine, thread "
        "count or batch); the float codec and the peer compute them in float.",
    ])
    publish("codec-context", "Mean-scale and autoregressive codecs, quantized", body, topic_page("codec"),
            write=not args.no_write)


if __name__ == "__main__":
    main()
