"""``lowbit train``: reproduce a reference checkpoint with the bundled recipe."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import Subset

from lowbit.cli.common import add_data_args, load_data, resolve_device
from lowbit.cli.outputs import check_outputs, cli_inputs
from lowbit.evaluate import evaluate
from lowbit.io.atomic import atomic_path
from lowbit.models import build_model
from lowbit.train import OPTIMIZERS, TrainOptions, train

CHECK_IMAGES = 2000  # the first test images, whose top-1 the recipe records for tests to recompute


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a reference model (SGD or AdamW, one-cycle cosine, crop + flip)")
    p.add_argument("model", help="architecture name, e.g. resnet20")
    add_data_args(p)
    defaults = TrainOptions()
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer,
                   help="sgd (Nesterov momentum) or adamw (e.g. --lr 1e-3 --weight-decay 0.05 for vit_small)")
    p.add_argument("--out", help="checkpoint path (default: <model>_<dataset>.safetensors)")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    train_set, info = load_data(args, "train")
    out = Path(args.out or f"{args.model}_{info.name.replace('-', '')}.safetensors")
    check_outputs(cli_inputs(args), {"--out": out, "--out (recipe)": out.with_suffix(".json")})
    test_set, _ = load_data(args, "test")
    kwargs = {"num_classes": info.num_classes, "in_channels": info.input_shape[0], "image_size": info.input_shape[1]}
    model = build_model(args.model, **kwargs)
    options = TrainOptions(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                           weight_decay=args.weight_decay, seed=args.seed, optimizer=args.optimizer)
    start = time.perf_counter()
    train(model, train_set, options, device=device, quiet=args.quiet)
    seconds = time.perf_counter() - start
    metrics = evaluate(model, test_set, class_names=info.classes, progress=not args.quiet)
    # a figure cheap enough for a test to recompute exactly: the bundled weights are checked against it
    check_images = min(CHECK_IMAGES, len(test_set))
    check = evaluate(model, Subset(test_set, range(check_images)), progress=False)
    with atomic_path(out) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    recipe = {"model": args.model, "model_kwargs": kwargs, "dataset": info.name, "options": options.to_dict(),
              "test_top1": metrics.top1, "test_f1": metrics.f1,
              "check": {"test_images": check_images, "top1": check.top1}, "train_seconds": round(seconds, 1),
              "torch": torch.__version__}
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(recipe, indent=2))
    print(f"{args.model} on {info.name}: test top-1 {100 * metrics.top1:.2f}%, F1 {100 * metrics.f1:.2f}% "
          f"after {args.epochs} epochs ({seconds / 60:.1f} min); saved {out}")
    return 0
