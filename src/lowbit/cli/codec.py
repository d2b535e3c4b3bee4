"""``lowbit codec``: evaluate, quantize, fine-tune, train and use learned image codecs (``eval``, ``quantize``,
``finetune``, ``compress``, ``decompress``, ``train``).

A codec is named as a bundled one with a quality (``--model codec-factorized-small --quality 2``) or as a
weights file written by ``lowbit codec train`` (``--model my_codec.safetensors``); the library resolves both
(:func:`lowbit.codec.zoo.open_codec`).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import time
from pathlib import Path

import torch

from lowbit.cli import codec_finetune, codec_quantize
from lowbit.cli.outputs import check_outputs
from lowbit.errors import LowbitError


ONNX_HELP = ("run the transforms from the ONNX files `lowbit export` wrote for this .lowbit codec (STEM.g_a.onnx "
             "and so on, in onnxruntime); the entropy models stay in lowbit")
PROVIDER_HELP = "with --onnx: onnxruntime's execution provider (cuda and tensorrt come with onnxruntime-gpu)"


def _add_onnx_args(p: argparse.ArgumentParser) -> None:
    from lowbit.deploy.providers import PROVIDERS

    p.add_argument("--onnx", metavar="STEM", help=ONNX_HELP)
    p.add_argument("--provider", default="cpu", choices=list(PROVIDERS), help=PROVIDER_HELP + " (default: %(default)s)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lowbit.codec.zoo import BUNDLED

    p = sub.add_parser("codec", help="learned image codecs: eval, quantize, finetune, compress, decompress, train")
    codec_sub = p.add_subparsers(dest="codec_command", metavar="SUBCOMMAND", required=True)
    model_help = (f"a bundled codec ({', '.join(BUNDLED)}), a .safetensors file from lowbit codec train, or (eval, "
                  "compress) a .lowbit file from lowbit codec quantize")

    e = codec_sub.add_parser("eval", help="rate-distortion of a codec on photos (real bitstreams), with a JPEG row")
    e.add_argument("--model", default="codec-factorized-small", help=f"{model_help} (default: %(default)s)")
    e.add_argument("--quality", type=int, default=2, help="quality of a bundled codec (default: %(default)s)")
    e.add_argument("--images", help="an image or a folder of images (default: the bundled held-out photos)")
    e.add_argument("--save-recon", help="folder to write reconstructions into, as PNG")
    e.add_argument("--every", type=int, default=1, help="with --save-recon: save every Nth image (default: 1)")
    e.add_argument("--no-jpeg", action="store_true", help="skip the JPEG baseline at equal bpp")
    e.add_argument("--json", help="write the results to this JSON file")
    _add_onnx_args(e)
    e.set_defaults(func=run_eval)

    c = codec_sub.add_parser("compress", help="compress one image into a self-describing bitstream file")
    c.add_argument("--model", default="codec-factorized-small", help=f"{model_help} (default: %(default)s)")
    c.add_argument("--quality", type=int, default=2, help="quality of a bundled codec (default: %(default)s)")
    c.add_argument("image")
    c.add_argument("output", help="bitstream file to write")
    _add_onnx_args(c)
    c.set_defaults(func=run_compress)

    d = codec_sub.add_parser("decompress", help="decode a bitstream file (it names its codec) into a PNG")
    d.add_argument("bitstream")
    d.add_argument("output", help="PNG file to write")
    d.add_argument("--model", help="the codec's .safetensors or .lowbit file, for a bitstream written by a codec "
                                   "that is not bundled")
    _add_onnx_args(d)
    d.set_defaults(func=run_decompress)

    codec_quantize.add_parser(codec_sub, model_help)
    codec_finetune.add_parser(codec_sub)

    t = codec_sub.add_parser("train", help="train a codec on random crops of photos (lambda*255^2*MSE + bpp)")
    _add_train_args(t)
    t.set_defaults(func=run_train)


def _add_train_args(t: argparse.ArgumentParser) -> None:
    from lowbit.codec.architectures import CODEC_ARCHITECTURES
    from lowbit.codec.train import CodecTrainOptions

    defaults = CodecTrainOptions()
    t.add_argument("--arch", default="bmshj2018-factorized-small",
                   help=f"one of {', '.join(CODEC_ARCHITECTURES)} (default: %(default)s)")
    t.add_argument("--n", type=int, help="transform channels N (default: the architecture's)")
    t.add_argument("--m", type=int, help="latent channels M (default: the architecture's)")
    t.add_argument("--lmbda", type=float, default=defaults.lmbda,
                   help="rate-distortion trade-off (default: %(default)s)")
    t.add_argument("--images", required=True, action="append", help="image or folder of training photos (repeatable)")
    t.add_argument("--steps", type=int, default=defaults.steps)
    t.add_argument("--crop", type=int, default=defaults.crop)
    t.add_argument("--batch-size", type=int, default=defaults.batch_size)
    t.add_argument("--lr", type=float, default=defaults.lr)
    t.add_argument("--final-lr", type=float, default=defaults.final_lr)
    t.add_argument("--seed", type=int, default=defaults.seed)
    t.add_argument("--init", help="start from this codec weights file (same architecture) instead of random weights")
    t.add_argument("--half", action="store_true", help="store the transforms in float16 (half the file size)")
    t.add_argument("--out", required=True, help="weights file to write (.safetensors; the recipe goes beside it)")
    t.add_argument("--quiet", action="store_true")


def run_train(args: argparse.Namespace) -> int:
    from lowbit.codec.architectures import codec_architecture
    from lowbit.codec.images import image_files, read_image, to_uint8
    from lowbit.codec.train import CodecTrainOptions, check_crop, train_codec
    from lowbit.codec.zoo import load_codec, save_codec, weights_digest

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise LowbitError(f"--out {out} must end in .safetensors (the recipe is written beside it as .json)")
    files = [f for folder in args.images for f in image_files(folder)]
    check_outputs({"--images": None, "--init": args.init, **{f"--images {f.name}": f for f in files}},
                  {"--out": out, "--out (recipe)": out.with_suffix(".json")})
    options = CodecTrainOptions(lmbda=args.lmbda, steps=args.steps, crop=args.crop, batch_size=args.batch_size,
                                lr=args.lr, final_lr=args.final_lr, seed=args.seed)
    arch = codec_architecture(args.arch)
    check_crop(args.crop, arch.stride)
    init = None
    if args.init:
        model, init_recipe = load_codec(args.init)
        if init_recipe["architecture"] != arch.name:
            raise LowbitError(f"--init {args.init} is a {init_recipe['architecture']} codec, not {arch.name}; "
                              "pass the matching --arch")
        n, m = init_recipe.get("N"), init_recipe.get("M")
        init = {"file": Path(args.init).name, "sha256": weights_digest(model)}
    else:
        n, m = args.n or arch.channels[0], args.m or arch.channels[1]
        model = arch.create(n, m)
    images = [to_uint8(read_image(f)) for f in files]
    start = time.perf_counter()
    stats = train_codec(model, images, options, quiet=args.quiet)
    seconds = time.perf_counter() - start
    recipe = {"architecture": arch.name, "N": n, "M": m, "options": options.to_dict(), "init": init,
              "training_photos": [f.name for f in files], **{k: round(v, 4) for k, v in stats.items()},
              "train_seconds": round(seconds, 1), "command": _train_command(args, n, m, options),
              "machine": f"{torch.get_num_threads()} CPU thread(s) ({platform.machine()}), torch {torch.__version__}",
              "date": datetime.date.today().isoformat()}
    save_codec(model, out, recipe, half=args.half)
    print(f"{arch.name} lambda {options.lmbda}: training PSNR {stats['train_psnr']:.2f} dB at "
          f"{stats['train_bpp']:.3f} bpp (estimated) after {options.steps} steps ({seconds / 60:.1f} min); saved {out}")
    return 0


def _train_command(args: argparse.Namespace, n: int, m: int, options) -> str:
    """The full command that reproduces this run, every option spelled out (defaults change between versions)."""
    words = ["lowbit", "codec", "train", "--arch", args.arch, "--n", str(n), "--m", str(m),
             "--lmbda", str(options.lmbda)]
    for folder in args.images:
        words += ["--images", folder]
    words += ["--steps", str(options.steps), "--crop", str(options.crop), "--batch-size", str(options.batch_size),
              "--lr", str(options.lr), "--final-lr", str(options.final_lr), "--seed", str(options.seed)]
    words += ["--init", args.init] if args.init else []
    words += ["--half"] if args.half else []
    return shlex.join(words + ["--out", args.out])


def run_eval(args: argparse.Namespace) -> int:
    from lowbit.cli.quantize import write_json
    from lowbit.codec.images import read_images
    from lowbit.codec.jpeg import jpeg_at_bpp
    from lowbit.codec.photos import held_out_photos
    from lowbit.codec.rate_distortion import evaluate_codec
    from lowbit.codec.zoo import open_codec
    from lowbit.report import human_bytes, table

    if args.every < 1:
        raise LowbitError(f"--every must be at least 1, got {args.every}")
    check_outputs({"--images": args.images, "--model": args.model}, {"--json": args.json})
    recon = Path(args.save_recon) if args.save_recon else None
    if recon is not None and recon.exists() and not recon.is_dir():
        raise LowbitError(f"--save-recon {recon} is a file, not a folder; name a folder to write PNGs into")
    codec = open_codec(args.model, args.quality)
    model = _runnable(codec, args)
    if args.images:
        images = read_images(args.images)
    else:
        images = [(p.name, read_images(p)[0][1]) for p in held_out_photos()]
    result = evaluate_codec(model, images, codec.stride, save_recon=recon, every=args.every)
    label = codec.name if codec.quality is None else f"{codec.name} q{codec.quality}"
    headers = ("image", "size", "bytes", "bpp", "PSNR dB", "MS-SSIM", "JPEG PSNR dB", "JPEG MS-SSIM",
               "encode s", "decode s")
    rows, jpeg = [], []
    for (name, image), r in zip(images, result.images):
        j = None if args.no_jpeg else jpeg_at_bpp(image, r.bpp)
        jpeg.append(j)
        rows.append([name, f"{r.width}x{r.height}", r.num_bytes, r.bpp, r.psnr, r.ms_ssim,
                     j.psnr if j else None, j.ms_ssim if j else None, r.encode_seconds, r.decode_seconds])
    mean = result.summary()
    jpeg_psnr = _mean([j.psnr for j in jpeg if j])
    jpeg_ssim = _mean([j.ms_ssim for j in jpeg if j and j.ms_ssim is not None])
    rows.append(["mean", "", None, mean["bpp"], mean["psnr"], mean["ms_ssim"], jpeg_psnr, jpeg_ssim,
                 mean["encode_seconds"], mean["decode_seconds"]])
    size = codec.weights_path.stat().st_size if codec.weights_path else None
    where = ""
    if args.onnx:
        from lowbit.codec.onnx_transforms import transform_paths

        names = ", ".join(path.name for path in transform_paths(args.onnx, codec.model).values())
        where = f"; transforms {names} in onnxruntime"
    print(f"{label} ({codec.architecture}, weights {human_bytes(size)}, sha256 {codec.digest[:12]}{where})")
    print(table(headers, rows))
    notes = sorted({r.note for r in result.images if r.note})
    for note in notes:
        print(f"note: {note}")
    if args.json:
        payload = {"model": codec.name, "quality": codec.quality, "architecture": codec.architecture,
                   "sha256": codec.digest, "onnx_transforms": args.onnx, "provider": args.provider,
                   **result.to_dict(),
                   "jpeg_at_equal_bpp": [None if j is None else vars(j) for j in jpeg],
                   "jpeg_mean": {"psnr": jpeg_psnr, "ms_ssim": jpeg_ssim}}
        write_json(args.json, payload)
    return 0


def _runnable(codec, args: argparse.Namespace) -> torch.nn.Module:
    """The codec's model, or with ``--onnx`` a copy whose transforms run from those files in onnxruntime."""
    if args.onnx is None:
        if args.provider != "cpu":
            raise LowbitError("--provider chooses where the --onnx transforms run; add --onnx STEM (files written by "
                              "`lowbit export`)")
        return codec.model
    from lowbit.codec.onnx_transforms import with_onnx_transforms

    return with_onnx_transforms(codec.model, args.onnx, codec.digest, provider=args.provider)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def run_compress(args: argparse.Namespace) -> int:
    from lowbit.codec.bitstream import CodecId, write_bitstream
    from lowbit.codec.coding import encode, prepare
    from lowbit.codec.images import read_image
    from lowbit.codec.zoo import open_codec

    check_outputs({"image": args.image, "--model": args.model}, {"output": args.output})
    codec = open_codec(args.model, args.quality)
    image = read_image(args.image)
    encoded = encode(prepare(_runnable(codec, args)), image, codec.stride)
    name = codec.name if codec.weights_path is None or codec.quality is not None else codec.weights_path.name
    size = write_bitstream(args.output, CodecId(name, codec.quality, codec.architecture, codec.digest), encoded)
    bpp = encoded.num_bytes * 8 / (encoded.height * encoded.width)
    print(f"{args.image} ({encoded.width}x{encoded.height}) -> {args.output}: {size} bytes, {bpp:.4f} bpp "
          "(entropy-coded strings only)")
    return 0


def run_decompress(args: argparse.Namespace) -> int:
    from lowbit.codec.bitstream import check_codec, read_bitstream
    from lowbit.codec.coding import decode, prepare
    from lowbit.codec.images import save_png
    from lowbit.codec.zoo import BUNDLED, open_codec

    check_outputs({"bitstream": args.bitstream, "--model": args.model}, {"output": args.output})
    codec_id, encoded = read_bitstream(args.bitstream)
    if args.model is None and codec_id.name not in BUNDLED:
        raise LowbitError(f"{args.bitstream} was written by codec {codec_id.name}, which is not bundled; pass "
                          "--model with that codec's .safetensors or .lowbit file")
    codec = open_codec(args.model or codec_id.name, codec_id.quality)
    check_codec(codec_id, codec.digest, codec.name if codec.quality is None else f"{codec.name} quality "
                f"{codec.quality}", args.bitstream)
    if codec_id.architecture != codec.architecture:  # the digest already differs; this names the cause
        raise LowbitError(f"{args.bitstream} needs a {codec_id.architecture} codec, not {codec.architecture}")
    decoded = decode(prepare(_runnable(codec, args)), encoded)
    save_png(decoded, args.output)
    print(f"{args.bitstream} -> {args.output} ({encoded.width}x{encoded.height})")
    return 0
