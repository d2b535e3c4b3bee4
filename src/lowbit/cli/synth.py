"""``lowbit synth`` and the ``--calib-data`` choices of ``lowbit quantize``: calibration without real images.

``--calib-data`` is ``train`` (the dataset's training split, the default), ``synthetic`` (images generated from
the model's batch-norm statistics, see :mod:`lowbit.data.synthesize`), ``noise`` (Gaussian noise in the valid
input range, a baseline), or a folder written by ``lowbit synth``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.cli.outputs import CALIB_CHOICES, check_outputs, cli_inputs
from lowbit.data import DatasetInfo
from lowbit.data.synthesize import SynthOptions, noise_images, synthesize
from lowbit.data.synthetic_files import GRID_FILE, IMAGES_FILE, load_synthetic, save_synthetic
from lowbit.errors import LowbitError
from lowbit.models import default_input_shape, default_normalization



def add_synth_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """Generation options (``prefix`` keeps ``quantize``'s ``--iters`` for the rounding method)."""
    d = SynthOptions()
    g = p.add_argument_group("synthetic images")
    g.add_argument("--n-images", type=int, help="images to generate (default: --calib-images, or 1024)")
    g.add_argument(f"--{prefix}iters", dest="synth_iters", type=int, default=d.iters,
                   help="optimization steps per image (default: %(default)s)")
    g.add_argument("--synth-batch-size", type=int, default=d.batch_size)
    g.add_argument("--synth-lr", type=float, default=d.lr)
    g.add_argument("--output-loss-factor", type=float, default=d.output_loss_factor,
                   help="weight of the output loss against the batch-norm loss (default: %(default)s)")
    g.add_argument("--layer-weighting", choices=("average", "first"), default=d.layer_weighting,
                   help="batch-norm layers weighted equally, or the first one 10x (default: %(default)s)")
    g.add_argument("--no-flip", action="store_true", help="no random flips (for inputs that are not mirror-symmetric)")


def add_calib_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib-data", default="train", metavar="SOURCE",
                   help="calibration images: train (the dataset's training split), synthetic (generated from the "
                        "model, no data needed), noise, or a folder written by `lowbit synth` (default: train)")
    add_synth_options(p, prefix="synth-")


def synth_options(args: argparse.Namespace) -> SynthOptions:
    return SynthOptions(iters=args.synth_iters, batch_size=args.synth_batch_size, lr=args.synth_lr,
                        output_loss_factor=args.output_loss_factor, layer_weighting=args.layer_weighting,
                        flip=not args.no_flip, seed=args.seed)


def input_description(args: argparse.Namespace, info: DatasetInfo | None) -> tuple[tuple[int, int, int], tuple, tuple]:
    """Input shape and normalization: the dataset's, or the pretrained architecture's own."""
    if info is not None:
        return info.input_shape, info.mean, info.std
    shape = default_input_shape(args.model)
    if shape[1] != args.image_size:
        shape = (shape[0], args.image_size, args.image_size)
    return shape, *default_normalization(args.model)


def calibration_data(args: argparse.Namespace, model: nn.Module, train_set: Any, info: DatasetInfo | None,
                     n_default: int) -> tuple[Any, dict]:
    """What ``--calib-data`` asks for, and a record of it for the report."""
    from lowbit.cli.common import check_count

    source = args.calib_data
    if source == "train":
        if train_set is None:
            raise LowbitError("no training images: pass --dataset, or --calib-data synthetic for data-free calibration")
        return train_set, {"calib_data": "train"}
    if source not in CALIB_CHOICES:
        images, meta = load_synthetic(source)
        shape, _, _ = input_description(args, info)
        if tuple(images.shape[1:]) != tuple(shape):
            raise LowbitError(f"images in {source} have shape {tuple(images.shape[1:])} but the model takes {shape}; "
                              "generate them for this model with `lowbit synth`")
        return images, {"calib_data": str(source), "synth": meta}
    shape, mean, std = input_description(args, info)
    n = n_default if args.n_images is None else check_count(args.n_images, "--n-images")
    if source == "noise":
        return noise_images(n, shape, mean, std, args.seed), {"calib_data": "noise"}
    start = time.perf_counter()
    options = synth_options(args)
    images = synthesize(model, n, shape, mean, std, options, progress=not args.quiet)
    return images, {"calib_data": "synthetic", "synth": {"n_images": n, "seconds": time.perf_counter() - start,
                                                         "options": options.to_dict()}}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lowbit.cli.common import add_data_args, add_model_args

    p = sub.add_parser("synth", help="generate calibration images from a model's batch-norm statistics")
    add_model_args(p)
    add_data_args(p, default=None)
    add_synth_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="synth", help="folder for images.safetensors and grid.png (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from lowbit.cli.common import (
        check_count,
        load_data,
        load_float_model,
        resolve_dataset,
        resolve_device,
    )

    check_outputs(cli_inputs(args), {"--out (images)": Path(args.out) / IMAGES_FILE,
                                     "--out (grid)": Path(args.out) / GRID_FILE})
    device = resolve_device(args.device)
    resolve_dataset(args)
    info = load_data(args, "train")[1] if args.dataset else None
    model = load_float_model(args, info).to(device)
    shape, mean, std = input_description(args, info)
    options = synth_options(args)
    n = 1024 if args.n_images is None else check_count(args.n_images, "--n-images")
    start = time.perf_counter()
    images = synthesize(model, n, shape, mean, std, options, progress=not args.quiet)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        predicted = torch.cat([model(images[i : i + 256].to(device)).argmax(1).cpu() for i in range(0, n, 256)])
    classes = int(predicted.unique().numel())
    tensor_path, grid_path = save_synthetic(images, args.out, mean, std, {
        "model": args.model, "n_images": n, "seconds": seconds, "options": options.to_dict()})
    print(f"generated {n} images of shape {tuple(shape)} in {seconds:.1f} s; the model assigns them to {classes} "
          f"classes; saved {tensor_path} and {grid_path}")
    return 0
