"""``lowbit codec quantize``: a learned codec to FP16, INT8 or lower, all of it or only its entropy coding, with
float and quantized rate-distortion measured on the same held-out photos (the library runs it:
:func:`lowbit.codec.quantize_run.quantize_codec_run`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit.cli.common import add_quant_args, check_count, config_from_args
from lowbit.cli.outputs import check_outputs
from lowbit.errors import LowbitError


def add_parser(codec_sub: argparse._SubParsersAction, model_help: str) -> None:
    from lowbit.cli.mixed import add_mixed_args
    from lowbit.codec import rd_sensitivity
    from lowbit.codec.task import SCOPES, SENSITIVITY

    rd_sensitivity.register()  # the codec's mixed-precision metric, offered by this command only

    q = codec_sub.add_parser("quantize", help="quantize a codec (e.g. INT8: --weights-bits 8 --activation-bits 16 "
                                              "--dynamic-activations) and save it as .lowbit")
    q.add_argument("--model", default="codec-factorized-small", help=f"{model_help} (default: %(default)s)")
    q.add_argument("--quality", type=int, default=2, help="quality of a bundled codec (default: %(default)s)")
    q.add_argument("--images", help="calibration photos, a file or folder (default: the bundled codecs' training "
                                    "photos from scikit-image)")
    q.add_argument("--crop", type=int, help="side of the random calibration crops (default: 128, or 4 times the "
                                            "stride of the codec's deepest latent where that is more)")
    q.add_argument("--scope", choices=SCOPES, default="all",
                   help="all: the whole codec; entropy: only the entropy-coding networks (h_a, h_s and a context "
                        "model with its entropy-parameter network), "
                        "transforms stay float (default: %(default)s)")
    q.add_argument("--eval-images", help="photos to measure rate-distortion on (default: the bundled held-out photos)")
    q.add_argument("--no-eval", action="store_true", help="skip the rate-distortion measurement")
    q.add_argument("--out", required=True, help="quantized codec to write (.lowbit)")
    q.add_argument("--json", help="write every figure to this JSON file")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    add_quant_args(q)
    add_mixed_args(q, flag=True)
    q.add_argument("--lmbda", type=float, help="mixed precision: the rate-distortion trade-off that weighs distortion "
                                               "against rate in the sensitivity (default: equal relative weights)")
    q.set_defaults(func=run_quantize, calib_images=64, batch_size=8, sensitivity=SENSITIVITY, sensitivity_images=16)


def run_quantize(args: argparse.Namespace) -> int:
    from lowbit.cli.mixed import budget_from_args, mixed_keywords, print_allocation
    from lowbit.cli.quantize import write_json
    from lowbit.mixed import Allocation
    from lowbit.codec.images import image_files, read_images
    from lowbit.codec.photos import held_out_photos, training_photos
    from lowbit.codec.quantize_run import calibration_crop, calibration_crops, quantize_codec_run
    from lowbit.codec.train import check_crop
    from lowbit.codec.zoo import open_codec
    from lowbit.report import human_bytes, table

    out = Path(args.out)
    if out.suffix != ".lowbit":
        raise LowbitError(f"--out {out} must end in .lowbit")
    check_count(args.calib_images, "--calib-images")
    check_outputs({"--model": args.model, "--images": args.images, "--eval-images": args.eval_images},
                  {"--out": out, "--json": args.json})
    config = config_from_args(args)
    mixed = mixed_keywords(args, budget_from_args(args), **({"lmbda": args.lmbda} if args.lmbda is not None else {}))
    if mixed is None and args.lmbda is not None:
        raise LowbitError("--lmbda weighs the mixed-precision sensitivity; add --mixed-precision and a budget")
    codec = open_codec(args.model, args.quality)
    if codec.weights_path is not None and codec.weights_path.suffix == ".lowbit":
        raise LowbitError(f"{args.model} is already quantized; quantize the float codec it came from")
    crop = calibration_crop(codec.stride) if args.crop is None else args.crop
    check_crop(crop, codec.stride)
    paths = image_files(args.images) if args.images else training_photos()
    calib = calibration_crops(paths, args.calib_images, crop, args.seed)
    eval_images = None
    if not args.no_eval:
        eval_images = read_images(args.eval_images) if args.eval_images else \
            [(p.name, read_images(p)[0][1]) for p in held_out_photos()]
    calib_record = {"calibration": {"photos": [p.name for p in paths], "crops": args.calib_images, "crop": crop}}
    result = quantize_codec_run(codec, calib, config, out, scope=args.scope, eval_images=eval_images,
                                calib_record=calib_record, progress=not args.quiet, mixed=mixed)
    label = codec.name if codec.quality is None else f"{codec.name} q{codec.quality}"
    print(f"{label}: {args.weights_bits}-bit weights, activations {args.activation_bits}"
          f"{' dynamic' if args.dynamic_activations else ''}, scope {args.scope}, {args.method} rounding, "
          f"{result['quantize_seconds']:.1f} s; {result['coverage_note']}")
    if result["entropy_parameters"] is not None:
        print(result["entropy_parameters"])
    if "mixed" in result:
        print_allocation(Allocation.from_dict(result["mixed"]))
    if eval_images:
        f, q = result["float_rd"]["mean"], result["quant_rd"]["mean"]
        rows = [[name, f"{m['bpp']:.4f}", f"{m['psnr']:.3f}", f"{m['ms_ssim']:.4f}" if m["ms_ssim"] else None,
                 human_bytes(result[key])]
                for name, m, key in (("float", f, "float_file_bytes"), ("quantized", q, "quant_file_bytes"))]
        rows.append(["change", f"{100 * (q['bpp'] / f['bpp'] - 1):+.2f}%", f"{q['psnr'] - f['psnr']:+.3f} dB",
                     f"{q['ms_ssim'] - f['ms_ssim']:+.4f}" if q["ms_ssim"] is not None else None, ""])
        print(f"mean over {len(eval_images)} photos (real bitstreams):")
        print(table(("model", "bpp", "PSNR dB", "MS-SSIM", "file"), rows))
    print(f"saved {out} ({human_bytes(result['quant_file_bytes'])})")
    if args.json:
        write_json(args.json, result)
    return 0
