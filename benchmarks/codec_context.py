"""Codecs with a mean-scale hyperprior, an autoregressive context model and a checkerboard context, quantized.

CompressAI's mean-scale hyperprior (``mbt2018-mean``), joint autoregressive codec (``mbt2018``) and Cheng et al.'s
anchor with a checkerboard context (``cheng2020-anchor-checkerboard``, a latent-codec model), 64 channels, are
trained here at the bundled hyperprior's three lambdas: where their analysis, synthesis and hyper-analysis
transforms have the bundled hyperprior's shapes they start from its transforms at the same rate point, the rest
from scratch, then the bundled recipe's steps train the whole codec on the same training photos. Each is then quantized (INT8
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
from codec_quant import CALIB_CROPS, LIGHT, SEED, bd_shown, calibration_set, training_images
from report import md_table, publish, topic_page

import lowbit
from lowbit.codec import evaluate_codec, open_codec
from lowbit.codec.architectures import codec_architecture
from lowbit.codec.exact import parameter_networks
from lowbit.codec.images import read_image
from lowbit.codec.photos import held_out_photos
from lowbit.codec.quantize_run import calibration_crop
from lowbit.codec.task import float_parameter_networks, scope_overrides
from lowbit.codec.train import CodecTrainOptions, train_codec
from lowbit.config import QuantConfig
from lowbit.report import human_bytes

ARCHITECTURES = ("mbt2018-mean-small", "mbt2018-small", "cheng2020-anchor-checkerboard")
CHANNELS = {"cheng2020-anchor-checkerboard": (64, 64)}  # the small width (the registered default is 128)
STARTING_POINT = "codec-hyperprior-small"  # its g_a, g_s and h_a have the shapes of the mbt2018 codecs'
SHARED = ("g_a.", "g_s.", "h_a.")
STARTED = {"mbt2018-mean-small": "g_a, g_s and h_a from the bundled hyperprior's",
           "mbt2018-small": "g_a, g_s and h_a from the bundled hyperprior's",
           "cheng2020-anchor-checkerboard": "from scratch: its transforms have other shapes"}
NOTES = " ".join([
    f"Calibration: {CALIB_CROPS} random crops (seed {SEED}) of the training photos, of the side `lowbit codec "
    "quantize` picks by default; evaluation: "
    "the four held-out photos, real bitstreams. The autoregressive codec codes its latents one position at a "
    "time in CompressAI's loops, which is most of its encode and decode time. Files: the `.lowbit` file for "
    "lowbit's variants, the quantized ONNX transforms for the peer (its entropy model, context model included, "
    "is the float codec's, not counted). INT8 entropy only quantizes the entropy-coding networks (h_a, h_s and "
    "the context and entropy-parameter networks) and keeps the transforms float. The last "
    "column says which entropy parameters lowbit computes in exact integers (the same on any machine, thread "
    "count or batch); the float codec and the peer compute them in float.",
])
VARIANTS = {"FP32": None, "INT8 light (W8, A16 dynamic)": (LIGHT, "all"), "INT8 entropy only": (LIGHT, "entropy"),
            "W8A8 static": ({"weights_bits": 8, "activation_bits": 8}, "all")}


def trained(arch: str, quality: int, steps: int) -> tuple[torch.nn.Module, float, float]:
    """The architecture trained at the bundled hyperprior's rate point ``quality``, its lambda and seconds."""
    start = open_codec(STARTING_POINT, quality)
    options = start.recipe["options"]
    model = codec_architecture(arch).create(*CHANNELS.get(arch, (None, None)))
    own = model.state_dict()
    shared = {k: v.float() for k, v in start.model.state_dict().items()
              if k.startswith(SHARED) and k in own and own[k].shape == v.shape}
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
    networks = parameter_networks(model)
    if not networks or float_parameter_networks(model):
        return "no (float)"
    return "yes (side information)" if len(networks) == 1 else "yes (side information and context model)"


def run(arch: str, steps: int, images) -> str:
    rows, curves, notes = [], {}, []
    stride = codec_architecture(arch).stride
    calib = calibration_set(stride)
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
        f"Training ({arch}, {STARTED[arch]}): " + "; ".join(notes) + f". Calibration crops: {calibration_crop(stride)} "
        "pixels.",
        NOTES,
])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps per rate point (batches of 8 crops)")
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks/codec.md alone")
    args = parser.parse_args()
    images = [(p.name, read_image(p)) for p in held_out_photos()]
    for arch in args.architectures:
        publish(f"codec-context-{arch}", f"{arch}, quantized", run(arch, args.steps, images),
                topic_page("codec"), write=not args.no_write)



if __name__ == "__main__":
    main()
