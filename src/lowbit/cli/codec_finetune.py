"""``lowbit codec finetune``: quantization-aware fine-tuning of a quantized codec on its rate-distortion loss,
with the start and the fine-tuned codec measured side by side on held-out photos (the library runs it:
:func:`lowbit.codec.finetune.finetune_codec`)."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from lowbit.cli.outputs import check_outputs
from lowbit.errors import LowbitError

HISTORY_HEADERS = ("step", "held-out loss", "PSNR dB", "bpp (estimated)", "lambda", "s", "kept")


def add_parser(codec_sub: argparse._SubParsersAction) -> None:
    from lowbit.codec.finetune import CodecFinetuneOptions

    d = CodecFinetuneOptions(lmbda=1.0)
    f = codec_sub.add_parser("finetune", help="quantization-aware fine-tuning of a quantized codec (.lowbit) on "
                                              "its rate-distortion loss")
    f.add_argument("file", help="a quantized codec written by lowbit codec quantize")
    f.add_argument("--images", help="training photos, a folder (default: the bundled codecs' training photos); "
                                    "--val-photos of them are held out to choose the model kept")
    f.add_argument("--lmbda", type=float, help="rate-distortion trade-off lambda (default: the one the codec was "
                                               "trained with, from its recipe)")
    f.add_argument("--steps", type=int, default=d.steps, help="training steps (default: %(default)s)")
    f.add_argument("--lr", type=float, default=d.lr, help="learning rate of the weights, cosine schedule "
                                                          "(default: %(default)s)")
    f.add_argument("--scale-lr", type=float, default=d.scale_lr,
                   help="step sizes' learning rate, relative to their size (default: %(default)s)")
    f.add_argument("--batch-size", type=int, default=d.batch_size, help="crops per step (default: %(default)s)")
    f.add_argument("--crop", type=int, default=d.crop, help="side of the random crops (default: %(default)s)")
    f.add_argument("--val-photos", type=int, default=d.val_photos,
                   help="training photos held out to choose the model kept (default: %(default)s)")
    f.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="steps between held-out scores (default: %(default)s)")
    f.add_argument("--hold-rate", action="store_true",
                   help="keep the starting model's rate: lambda follows the bits spent, so that what fine-tuning "
                        "recovers shows as quality at the same bpp (for codecs trained short of convergence, which "
                        "fine-tuning on their own loss moves to more bits)")
    f.add_argument("--seed", type=int, default=d.seed)
    f.add_argument("--eval-images", help="photos to measure rate-distortion on (default: the bundled held-out photos)")
    f.add_argument("--no-eval", action="store_true", help="skip the rate-distortion measurement")
    f.add_argument("--out", required=True, help="fine-tuned codec to write (.lowbit)")
    f.add_argument("--json", help="write the history and every figure to this JSON file")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=run_finetune)


def trained_lambda(provenance: dict[str, Any]) -> float | None:
    """The lambda the float codec behind a quantized file was trained with, when its recipe can be found."""
    from lowbit.codec.zoo import BUNDLED, bundled_weights, read_recipe

    source = provenance.get("codec")
    if not isinstance(source, dict) or not isinstance(source.get("model"), str):
        return None
    name, quality = source["model"], source.get("quality")
    try:
        if name in BUNDLED and isinstance(quality, int):
            recipe = read_recipe(bundled_weights(name, quality))
        elif name.endswith(".safetensors") and Path(name).is_file():
            recipe = read_recipe(name)
        else:
            return None
    except LowbitError:
        return None
    value = (recipe.get("options") or {}).get("lmbda")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def history_rows(run: dict[str, Any]) -> list[list[Any]]:
    return [[h["step"], f"{h['loss']:.5f}", f"{h['psnr']:.3f}", f"{h['bpp']:.4f}", f"{h['lmbda']:.5g}", h["seconds"],
             "*" if h["step"] == run["kept_step"] else ""]
            for h in run["history"]]


def run_finetune(args: argparse.Namespace) -> int:
    from lowbit.cli.quantize import write_json
    from lowbit.codec.finetune import CodecFinetuneOptions, finetune_codec
    from lowbit.codec.images import image_files, read_image, read_images, to_uint8
    from lowbit.codec.photos import held_out_photos, training_photos
    from lowbit.codec.rate_distortion import evaluate_codec
    from lowbit.codec.train import check_crop
    from lowbit.codec.zoo import open_codec
    from lowbit.io.lowbit_file import save
    from lowbit.report import human_bytes, table

    out = Path(args.out)
    if out.suffix != ".lowbit":
        raise LowbitError(f"--out {out} must end in .lowbit")
    if Path(args.file).suffix != ".lowbit":
        raise LowbitError(f"{args.file} is not a .lowbit file; quantize the codec first (lowbit codec quantize)")
    check_outputs({"file": args.file, "--images": args.images, "--eval-images": args.eval_images},
                  {"--out": out, "--json": args.json})
    codec = open_codec(args.file)
    check_crop(args.crop, codec.stride)
    provenance = dict(codec.model.lowbit_record.provenance)
    lmbda = args.lmbda if args.lmbda is not None else trained_lambda(provenance)
    if lmbda is None:
        raise LowbitError(f"the lambda {args.file}'s codec was trained with is unknown (its recipe is not at hand); "
                          "pass --lmbda")
    options = CodecFinetuneOptions(lmbda=lmbda, steps=args.steps, lr=args.lr, scale_lr=args.scale_lr,
                                   batch_size=args.batch_size, crop=args.crop, val_photos=args.val_photos,
                                   eval_every=args.eval_every, seed=args.seed, hold_rate=args.hold_rate)
    paths = image_files(args.images) if args.images else training_photos()
    photos = [to_uint8(read_image(p)) for p in paths]
    eval_images = None
    if not args.no_eval:
        eval_images = read_images(args.eval_images) if args.eval_images else \
            [(p.name, read_images(p)[0][1]) for p in held_out_photos()]
    start = time.perf_counter()
    tuned = finetune_codec(codec.model, photos, options, progress=not args.quiet)
    run = dict(tuned.lowbit_info.extra["finetune"], train_seconds=round(time.perf_counter() - start, 1),
               photos=[p.name for p in paths])
    result: dict[str, Any] = {"file": args.file, "out": str(out), "finetune": run}
    extra = {**provenance, "finetune": run}
    if eval_images:
        result["start_rd"] = evaluate_codec(codec.model, eval_images, codec.stride).to_dict()
        result["quant_rd"] = evaluate_codec(tuned, eval_images, codec.stride).to_dict()
        extra["rate_distortion"] = {**provenance.get("rate_distortion", {}),
                                    "images": [name for name, _ in eval_images],
                                    "quantized": result["quant_rd"]["mean"]}
    save(tuned, out, extra)
    print(table(HISTORY_HEADERS, history_rows(run)))
    print(f"step 0 is the starting model; the step kept (*) has the lowest rate-distortion loss (lambda {lmbda}) on "
          f"{run['held_out_photos']} held-out training photos; trained on {run['train_photos']}")
    if eval_images:
        s, q = result["start_rd"]["mean"], result["quant_rd"]["mean"]
        rows = [[name, f"{m['bpp']:.4f}", f"{m['psnr']:.3f}", f"{m['ms_ssim']:.4f}" if m["ms_ssim"] else None]
                for name, m in (("start", s), ("fine-tuned", q))]
        rows.append(["change", f"{100 * (q['bpp'] / s['bpp'] - 1):+.2f}%", f"{q['psnr'] - s['psnr']:+.3f} dB",
                     f"{q['ms_ssim'] - s['ms_ssim']:+.4f}" if q["ms_ssim"] is not None else None])
        print(f"mean over {len(eval_images)} photos (real bitstreams):")
        print(table(("model", "bpp", "PSNR dB", "MS-SSIM"), rows))
    print(f"saved {out} ({human_bytes(out.stat().st_size)})")
    if args.json:
        write_json(args.json, result)
    return 0
