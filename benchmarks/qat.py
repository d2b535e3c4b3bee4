"""Quantization-aware fine-tuning against post-training quantization and MCT's QAT, like for like.

For each setting (resnet20: W2A4, W2A2 and mixed 2/4/8 bits at 16x weights compression with 8-bit
activations; mobilenet_v2_small: W4A4 and W2A4), every layer at the row's widths. Weights compression counts
weight bits only (MCT's ``weights_memory``); at 16x every resnet20 layer must take 2 bits, which leaves mixed
precision no choice (that is the W2A8 model), so the mixed row runs at 12x:
- PTQ with BRECQ (or ``--ptq-method qdrop``) on 1024 calibration images of the training split (the starting
  point of lowbit's QAT);
- ``lowbit.finetune`` from that model for ``--epochs`` epochs, once on the labels (cross-entropy, the API's
  default without a teacher) and once distilled from the float model (what ``lowbit finetune --distill`` does
  when the float weights the file came from are at hand), the defaults otherwise;
- MCT 2.6.1's PyTorch QAT (its PTQ on the same calibration images, then LSQ quantizers on weights and
  activations, its mixed precision under the same weights-memory target for the mixed row), trained by the same
  loop as lowbit's cross-entropy row: the same images in the same order, batch, epochs, AdamW with the same
  learning rates and weight decay on one cosine schedule, step sizes at the same rate relative to their magnitude.
Both tools hold out the same 10% of the training split and keep the epoch (0 = before fine-tuning) with the best
top-1 on it; top-1 on the full test split. Wall time per epoch includes the held-out evaluation. MCT's
finalization rounds its activation thresholds to powers of two (its target platform's choice), which the
held-out curve, measured while training, does not include.
Run (MCT installed): python3 qat.py
"""

from __future__ import annotations

import argparse
import os
import re
import time

import torch
import torch.nn.functional as F
from torch import nn

import lowbit
import peers
from lowbit.config import Override, QuantConfig, QuantSpec
from lowbit.data import calibration_batches, load_dataset
from lowbit.mixed import Budget
from lowbit.qat.data import TrainingData, split
from lowbit.qat.loop import cosine_factor
from lowbit.qat.options import DISTILL_LOSSES, FinetuneOptions
from report import bundled_model, float_weight_bytes, md_table, publish, topic_page

SETTINGS = {"resnet20": ["2/4", "2/2", "mixed12"], "mobilenet_v2_small": ["4/4", "2/4"]}
# What 4-bit activations on every layer cost through the image alone: the first layer's input at 4 bits, every
# other weight and activation at 16 (round-to-nearest); lowbit only
INPUT_ONLY = "input4"


def label(setting: str) -> str:
    if setting == INPUT_ONLY:
        return "float, input image at 4 bits"
    if setting.startswith("mixed"):
        return f"mixed 2/4/8 at {setting.removeprefix('mixed')}x weights, A8"
    return "W{}A{}".format(*setting.split("/"))


def ptq(model: nn.Module, calib: list[torch.Tensor], setting: str, iters: int,
        first_last_bits: int | None = None, method: str = "brecq", residual_bits: int | None = None) -> nn.Module:
    """lowbit's PTQ with learned rounding (``method``) at the setting's widths (mixed: Hessian allocation under
    the weights budget; ``INPUT_ONLY``: round-to-nearest)."""
    if setting == INPUT_ONLY:
        first = next(n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        config = QuantConfig.from_bits(16, 16, overrides=(Override(first, activations=QuantSpec(bits=4)),))
        return lowbit.quantize(model, calib, config)
    if setting.startswith("mixed"):
        cr = float(setting.removeprefix("mixed"))
        return lowbit.quantize(model, calib, weights_bits=8, activation_bits=8, method=method, iters=iters,
                               first_last_bits=first_last_bits, residual_bits=residual_bits,
                               mixed=Budget(weights_cr=cr, bits=(2, 4, 8), size_measure="codes"))
    w, a = (int(v) for v in setting.split("/"))
    return lowbit.quantize(model, calib, weights_bits=w, activation_bits=a, method=method, iters=iters,
                           first_last_bits=first_last_bits, residual_bits=residual_bits)


def section(first_last_bits: int | None, data_percentage: float, lr: float | None = None,
            models: list[str] | None = None, settings: list[str] | None = None,
            ptq_method: str = "brecq", with_mct: bool = True, distill_loss: str = "kl",
            residual_bits: int | None = None) -> tuple[str, str, str]:
    """The page section's key and title, and which layers the rows' widths cover; runs over another share of
    the training split get sections of their own, and so does each set of models and settings chosen by
    name, run at a learning rate other than the default, from another PTQ start, with another distillation
    loss or with residual branches at another width."""
    share = f"-{100 * data_percentage:g}pct"
    if residual_bits is not None:
        key, title, scope = section(first_last_bits, data_percentage, lr, models, settings, ptq_method, with_mct,
                                    distill_loss)
        return (f"{key}-residual{residual_bits}", f"{title}, residual branches at {residual_bits} bits",
                f"{scope}; the outputs of the layers that feed a residual add (each block's last convolution and "
                f"its downsample shortcut) at {residual_bits} bits, every layer input at the row's width")
    if distill_loss != "kl":
        key, title, scope = section(first_last_bits, data_percentage, lr, models, settings, ptq_method, with_mct)
        return f"{key}-{distill_loss}", f"{title}, distilled by {distill_loss} on logits", scope
    if ptq_method != "brecq":
        key, title, scope = section(first_last_bits, data_percentage, lr, models, settings, with_mct=with_mct)
        return f"{key}-from-{ptq_method}", f"{title}, starting from {ptq_method}", scope
    if lr is not None or settings:
        key, title, scope = section(first_last_bits, data_percentage, with_mct=with_mct)
        names = (models or []) + [label(s) for s in settings or []]
        rate_key, rate_title = (f"-lr{lr:g}", f", learning rate {lr:g}") if lr is not None else ("", "")
        return (key + rate_key + "".join("-" + re.sub("[^a-z0-9]+", "-", n.lower()) for n in names),
                title + rate_title + (f", {' '.join(names)}" if names else ""), scope)
    if not first_last_bits:
        tools = "lowbit and MCT" if with_mct else "every layer at the row's widths (lowbit only)"
        return ("qat" + share, f"Quantization-aware fine-tuning on Fashion-MNIST, {tools}, {share[1:-3]}% of "
                "the training split per epoch",
                "every layer at the row's widths" + (" for both tools" if with_mct else ""))
    return (f"qat-first-last-{first_last_bits}{share}",
            f"Quantization-aware fine-tuning, first and last layers at {first_last_bits} bits (lowbit only), "
            f"{share[1:-3]}% of the training split per epoch",
            f"first and last layers and their inputs at {first_last_bits} bits")


@torch.no_grad()
def held_out_top1(model: nn.Module, data: TrainingData) -> float:
    model.eval()
    hits = total = 0
    for x, y in data.held_out_batches(256):
        hits += int((model(x).argmax(1) == y).sum())
        total += len(x)
    return hits / total


def train_like_lowbit(model: nn.Module, data: TrainingData, options: FinetuneOptions) -> tuple[nn.Module, list, int]:
    """Train a peer's QAT model with lowbit's fine-tuning loop settings; returns the model of the best held-out
    epoch, the held-out top-1 per epoch and the epoch kept."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scales = [p for n, p in named if peers.is_mct_quantizer_parameter(n)]
    rest = [p for n, p in named if not peers.is_mct_quantizer_parameter(n)]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": options.weight_decay, "lr": options.lr},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "lr": options.lr}]
    groups += [{"params": [p], "weight_decay": 0.0,
                "lr": options.scale_lr * float(p.detach().abs().mean().clamp_min(1e-12))} for p in scales]
    for g in groups:
        g["base_lr"] = g["lr"]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], betas=(options.momentum, 0.999))
    total_steps, step = options.epochs * data.steps_per_epoch(options.batch_size), 0
    history = [held_out_top1(model, data)]
    best = (history[0], 0, {k: v.clone() for k, v in model.state_dict().items()})
    for epoch in range(options.epochs):
        model.train()
        for x, y in data.epoch_batches(epoch, options.batch_size, options.seed):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * cosine_factor(step, total_steps)
            optimizer.step()
            with torch.no_grad():
                for p in scales:
                    p.clamp_(min=1e-8)
            step += 1
        history.append(held_out_top1(model, data))
        if history[-1] > best[0]:
            best = (history[-1], epoch + 1, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    return model.eval(), history, best[1]


def runs_mct(args: argparse.Namespace) -> bool:
    """MCT's rows run unless switched off or a row keeps some layers at another width (not set up for MCT)."""
    return not (args.no_mct or args.first_last_bits or args.residual_bits)


def run_setting(name: str, model: nn.Module, setting: str, args, train, test, calib, float_top1: float,
                rows: list[list]) -> None:
    options = FinetuneOptions(epochs=args.epochs, data_percentage=args.data_percentage, batch_size=args.batch,
                              distill_loss=args.distill_loss, **({"lr": args.lr} if args.lr is not None else {}))

    def record(tool: str, q: nn.Module, kept: str, history: list[float] | None, per_epoch: float | None,
               seconds: float) -> None:
        top1 = 100 * lowbit.evaluate(q, test).top1
        curve = " / ".join(f"{100 * v:.2f}" for v in history) if history else "-"
        rows.append([name, label(setting), tool, top1, top1 - float_top1, kept, curve, per_epoch, seconds])
        print(rows[-1], flush=True)

    start = time.perf_counter()
    q = ptq(model, calib, setting, args.iters, args.first_last_bits, args.ptq_method, args.residual_bits)
    ptq_seconds = time.perf_counter() - start
    method = "nearest" if setting == INPUT_ONLY else args.ptq_method
    record(f"lowbit PTQ ({method})", q, "-", None, None, ptq_seconds)
    labels, distill = ("lowbit QAT, cross-entropy", None), ("lowbit QAT, distilled from float", model)
    for tool, teacher in {"both": (labels, distill), "labels": (labels,), "distill": (distill,)}[args.objective]:
        start = time.perf_counter()
        tuned = lowbit.finetune(q, train, options, teacher=teacher)
        seconds = time.perf_counter() - start
        run = tuned.lowbit_info.extra["finetune"]
        history = [h["held_out_top1"] for h in run["history"]]
        record(tool, tuned, str(run["kept_epoch"]), history, seconds / args.epochs, ptq_seconds + seconds)
    if not runs_mct(args) or setting == INPUT_ONLY:
        return
    if setting == "8/8":  # torch.ao's QAT has int8 kernels only
        start = time.perf_counter()
        ao_model = peers.torchao_qat_model(model, calib)
        init_seconds = time.perf_counter() - start
        trained, ao_history, kept = train_like_lowbit(ao_model, split(train, options), options)
        seconds = time.perf_counter() - start - init_seconds
        record(f"torch.ao {torch.__version__.split('+')[0]} QAT (int8 model)", peers.torchao_qat_convert(trained),
               str(kept), ao_history, seconds / args.epochs, init_seconds + seconds)
    start = time.perf_counter()
    memory = float_weight_bytes(model) / float(setting.removeprefix("mixed")) if setting.startswith("mixed") else None
    w, a = (None, None) if memory else (int(v) for v in setting.split("/"))
    qat_model = peers.mct_qat_model(model, calib, w, a, memory)
    init_seconds = time.perf_counter() - start
    trained, mct_history, kept = train_like_lowbit(qat_model, split(train, options), options)
    seconds = time.perf_counter() - start - init_seconds
    record(f"MCT {peers.mct_version()} QAT (LSQ)", peers.mct_qat_finalize(trained), str(kept), mct_history,
           seconds / args.epochs, init_seconds + seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(SETTINGS))
    parser.add_argument("--settings", nargs="+", help=f"W/A pairs, mixedCR or {INPUT_ONLY} (the image alone at 4 "
                        "bits) (default: each model's own list)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-percentage", type=float, default=1.0, help="share of the training images per epoch")
    parser.add_argument("--batch", type=int, default=64, help="fine-tuning batch, both tools")
    parser.add_argument("--iters", type=int, default=500, help="learned rounding steps per block")
    parser.add_argument("--ptq-method", choices=("brecq", "qdrop"), default="brecq",
                        help="lowbit's PTQ, the start of its QAT")
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--first-last-bits", type=int, help="keep the first and last layers (and their inputs) at "
                        "this width, as QAT papers do; lowbit only (MCT's per-layer widths are not set up here)")
    parser.add_argument("--residual-bits", type=int, help="requantize the outputs of the layers that feed a residual "
                        "add at this width (learned rounding's papers quantize a block's output once, after its add); "
                        "lowbit only")
    parser.add_argument("--lr", type=float, help="lowbit's (and MCT's) weight learning rate (default: lowbit's)")
    parser.add_argument("--objective", choices=("both", "labels", "distill"), default="both",
                        help="which lowbit QAT rows to run (default: both)")
    parser.add_argument("--distill-loss", choices=DISTILL_LOSSES, default=FinetuneOptions().distill_loss,
                        help="loss of the distilled rows: KL divergence of the softmax or squared error of logits")
    parser.add_argument("--no-mct", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    train, _ = load_dataset("fashion-mnist", "train")
    test, _ = load_dataset("fashion-mnist", "test")
    rows: list[list] = []
    key, title, scope = section(args.first_last_bits, args.data_percentage, args.lr, args.models,
                                 args.settings, args.ptq_method, not args.no_mct, args.distill_loss,
                                 args.residual_bits)
    for name in args.models:
        torch.manual_seed(0)
        model = bundled_model(name)
        calib = calibration_batches(train, args.calib_images, 32, seed=0)
        float_top1 = 100 * lowbit.evaluate(model, test).top1
        rows.append([name, "float32", "-", float_top1, 0.0, "-", "-", None, None])
        for setting in args.settings or SETTINGS[name]:
            run_setting(name, model, setting, args, train, test, calib, float_top1, rows)
            body = md_table(["model", "setting", "tool", "test top-1 %", "vs float", "epoch kept",
                             "held-out top-1 % by epoch (0 = start)", "s / epoch", "total s"], rows) + (
                f"\n\n{args.epochs} epochs over {100 * args.data_percentage:g}% of the training split less the 10% "
                f"held out (batch {args.batch}); {args.ptq_method} {args.iters} steps per block on "
                f"{args.calib_images} calibration images; {scope}. " + ("" if not runs_mct(args) else
                "MCT trains on the labels, like lowbit's cross-entropy row. ") + (
                "torch.ao's QAT (W8A8 only: its kernels are int8) trains the same way, its batch-norm statistics "
                "frozen, and is scored as its converted int8 model. " if "8/8" in (args.settings or []) else "") + (
                "Total seconds include the PTQ start (lowbit's learned rounding" +
                ("; MCT's own PTQ and QAT set-up" if runs_mct(args) else "") + ")."))
            publish(key, title, body, topic_page("qat"), write=not args.no_write)


if __name__ == "__main__":
    main()
