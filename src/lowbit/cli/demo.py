"""``lowbit demo``: the bundled ResNet-20 on Fashion-MNIST quantized at W8A8 and W4A8, then the W8A8 model
deployed as a user would deploy it: ``lowbit export`` to ONNX (checked in onnxruntime against lowbit) and
``lowbit bench`` (float PyTorch, the simulated model, onnxruntime fp32 and onnxruntime int8)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit.cli import deploy, quantize
from lowbit.cli.outputs import check_outputs
from lowbit.cli.quantize import add_run_args, default_out, label_of, print_report, write_json
from lowbit.config import QuantConfig

DEMO_BITS = ((8, 8), (4, 8))
DEPLOYED = (8, 8)
TIMING = ("--batch-size", "1", "256", "--repeats", "10")  # latency, then throughput at an evaluation batch size


def add_parsers(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="quantize the bundled Fashion-MNIST ResNet-20 at W8A8 and W4A8, then export the "
                                    "W8A8 model to ONNX and time it in onnxruntime")
    add_run_args(d)
    d.add_argument("--no-deploy", action="store_true", help="skip the ONNX export, its check and the timing")
    d.set_defaults(func=run_demo)


def model_paths(out: str | None) -> dict[tuple[int, int], Path]:
    """Each demo setting's .lowbit file: beside ``--out`` (its suffix replaced), else the default names."""
    return {(w, a): Path(out).with_suffix(f".w{w}a{a}.lowbit") if out
            else default_out("resnet20", QuantConfig.from_bits(w, a)) for w, a in DEMO_BITS}


def deployment_commands(model: Path, onnx_file: Path) -> list[list[str]]:
    """The two commands that deploy ``model``: export with a check on the whole test split, then timing."""
    return [["export", str(model), "--out", str(onnx_file), "--check-images", "10000"],
            ["bench", str(model), "--onnx", str(onnx_file), *TIMING]]


def run_demo(args: argparse.Namespace) -> int:
    """Quantize at each of :data:`DEMO_BITS` (1024 calibration images), report float against quantized, then
    run :func:`deployment_commands` on the W8A8 model unless ``--no-deploy``."""
    paths = model_paths(args.out)
    onnx_file = paths[DEPLOYED].with_suffix(".onnx")
    outs = {f"--out (W{w}A{a})": path for (w, a), path in paths.items()}
    check_outputs({}, {**outs, **({} if args.no_deploy else {"ONNX file": onnx_file}), "--json": args.json})
    results = []
    base = vars(args).copy()
    for (wbits, abits), path in paths.items():
        ns = argparse.Namespace(**{**base, "model": "resnet20", "checkpoint": None, "pretrained": False,
                                   "dataset": "fashion-mnist", "data_dir": None, "train_data_path": None,
                                   "val_data_path": None, "image_size": 28, "calib_data": "train",
                                   "out": str(path)})
        config = QuantConfig.from_bits(wbits, abits)
        result = quantize.quantize_and_report(ns, config)
        print_report(result, label_of(config))
        print()
        results.append(result)
    if args.json:
        write_json(args.json, results)
    if not args.no_deploy:
        commands = argparse.ArgumentParser(prog="lowbit")
        deploy.add_parsers(commands.add_subparsers())
        for argv in deployment_commands(paths[DEPLOYED], onnx_file):
            print("$ lowbit " + " ".join(argv))
            command = commands.parse_args(argv)
            command.func(command)
            print()
    return 0
