"""``lowbit finetune``: quantization-aware fine-tuning of a ``.lowbit`` file, with a per-epoch table.

The epoch kept is chosen on images held out from the training split; the test split is read only after
training, to report the starting and the fine-tuned model side by side.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from torch import nn

from lowbit.api import load
from lowbit.cli.common import add_data_args, load_data, refuse_codec_file, resolve_device
from lowbit.cli.outputs import check_outputs, cli_inputs
from lowbit.cli.quantize import write_json
from lowbit.errors import LowbitError
from lowbit.evaluate import evaluate
from lowbit.io.lowbit_file import read_record, save
from lowbit.io.run_record import METRIC_KEYS, RunRecord
from lowbit.models.weights_source import PROVENANCE_KEY, find_weights
from lowbit.qat import FinetuneOptions, finetune
from lowbit.qat.checkpoint import state_path
from lowbit.qat.options import DISTILL_LOSSES, OPTIMIZERS
from lowbit.report import METRIC_HEADERS, metrics_row, table

EPOCH_HEADERS = ("epoch", "train loss", "held-out top1 %", "held-out loss", "lr", "s", "kept")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="quantization-aware fine-tuning of a .lowbit file (OMPQ's QAT path)")
    p.add_argument("file", help="a .lowbit file: uniform, mixed, learned rounding or data-free")
    add_data_args(p, default=None)
    d = FinetuneOptions()
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=d.epochs, help="default: %(default)s")
    t.add_argument("--lr", type=float, default=d.lr, help="learning rate of the weights, cosine schedule "
                   "(default: %(default)s)")
    t.add_argument("--scale-lr", type=float, default=d.scale_lr,
                   help="step sizes' learning rate, relative to their size (default: %(default)s)")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default: %(default)s")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="default: %(default)s")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="default: %(default)s")
    t.add_argument("--act-range-momentum", type=float, default=None, metavar="M",
                   help="track activation ranges as a moving average with momentum M (e.g. 0.99) instead of "
                        "learning their step sizes")
    t.add_argument("--data-percentage", type=float, default=d.data_percentage,
                   help="share of the training images used, in (0, 1] (default: %(default)s)")
    t.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of the training split held out to choose the epoch kept (default: %(default)s)")
    t.add_argument("--val-images", type=int, help="hold out this many training images instead")
    t.add_argument("--distill", action="store_true",
                   help="learn the teacher's outputs instead of the labels (label-free QAT)")
    t.add_argument("--distill-loss", choices=DISTILL_LOSSES, default=d.distill_loss,
                   help="KL divergence of the softmax or MSE of the logits (default: %(default)s)")
    t.add_argument("--teacher-checkpoint", metavar="FILE", help="float weights of the file's architecture to "
                   "distill from (default with --distill: the float weights the file was quantized from, when "
                   "they are still there unchanged)")
    t.add_argument("--seed", type=int, default=d.seed)
    c = p.add_argument_group("checkpoints")
    c.add_argument("--checkpoint", metavar="FILE", help="checkpoint written every epoch "
                   "(default: <out>.ckpt.lowbit, with <out>.ckpt.state.safetensors beside it)")
    c.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="N",
                   help="also write the checkpoint every N steps (default: each epoch only)")
    c.add_argument("--no-checkpoint", action="store_true", help="write no checkpoint")
    c.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue the run of this checkpoint (pass the same input file and options)")
    o = p.add_argument_group("output")
    o.add_argument("--out", help="where to write the fine-tuned .lowbit file (default: <file>_qat.lowbit)")
    o.add_argument("--json", help="write the per-epoch history and metrics to this JSON file")
    o.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    o.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_finetune)


def options_from_args(args: argparse.Namespace) -> FinetuneOptions:
    return FinetuneOptions(epochs=args.epochs, lr=args.lr, scale_lr=args.scale_lr, weight_decay=args.weight_decay,
                           batch_size=args.batch_size, optimizer=args.optimizer,
                           act_range_momentum=args.act_range_momentum, data_percentage=args.data_percentage,
                           val_fraction=args.val_fraction, val_images=args.val_images, distill=args.distill,
                           distill_loss=args.distill_loss, checkpoint_every=args.checkpoint_every, seed=args.seed)


def planned_files(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The output file and the checkpoint (``None`` with ``--no-checkpoint``); resuming continues its checkpoint."""
    out = Path(args.out) if args.out else Path(args.file).with_name(f"{Path(args.file).stem}_qat.lowbit")
    if args.no_checkpoint:
        return out, None
    if args.checkpoint:
        return out, Path(args.checkpoint)
    return out, Path(args.resume) if args.resume else out.with_name(f"{out.stem}.ckpt.lowbit")


def teacher_from_args(args: argparse.Namespace, record: RunRecord) -> tuple[nn.Module | None, str | None]:
    """The float teacher and where it came from: ``--teacher-checkpoint``, else, when distilling, the float
    weights the file was quantized from if they are still at hand with the same bytes, else none."""
    from lowbit.models import load_checkpoint, rebuild

    if args.teacher_checkpoint:
        if record.arch is None:
            raise LowbitError(f"{args.file} holds a custom architecture, so --teacher-checkpoint cannot be built; "
                              "use the Python API with teacher=YourNet()")
        path, source = Path(args.teacher_checkpoint), f"checkpoint {Path(args.teacher_checkpoint).name}"
    else:
        path = find_weights(record.provenance.get(PROVENANCE_KEY)) if args.distill and record.arch else None
        if path is None:
            return None, None
        source = f"the float weights it was quantized from ({path.name})"
    teacher = rebuild(record.arch.to_dict())
    load_checkpoint(teacher, path)
    return teacher.eval(), source


def _metrics(m: Any) -> dict[str, Any]:
    return {k: m.to_dict()[k] for k in (*METRIC_KEYS, "n")}


def run_finetune(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    out, checkpoint = planned_files(args)
    # resuming overwrites its own checkpoint; any other --resume file is an input to protect
    continued = args.resume is None or (checkpoint is not None and Path(args.resume) == checkpoint)
    resume_input = {} if continued else {"--resume": args.resume}
    outputs: dict[str, Any] = {"--out": out, "--json": args.json}
    if checkpoint is not None:
        outputs.update({"--checkpoint": checkpoint, "--checkpoint (state)": state_path(checkpoint)})
    check_outputs(cli_inputs(args, {"file": args.file, "--teacher-checkpoint": args.teacher_checkpoint,
                                    **resume_input}), outputs)
    device = resolve_device(args.device)
    record = read_record(args.file)
    refuse_codec_file(record.arch.to_dict() if record.arch else None, args.file, "finetune")
    args.dataset = args.dataset or (record.dataset or {}).get("name") or "fashion-mnist"
    qmodel = load(args.file, device=device)
    teacher, teacher_source = teacher_from_args(args, record)
    if teacher_source:
        print(f"distilling from {teacher_source}")
    train_set, info = load_data(args, "train")
    start = time.perf_counter()
    tuned = finetune(qmodel, train_set, options, teacher=teacher, checkpoint=checkpoint, resume=args.resume,
                     progress=not args.quiet, device=device)
    seconds = time.perf_counter() - start
    run = dict(tuned.lowbit_info.extra["finetune"], train_seconds=round(seconds, 1))
    if teacher_source:
        run["teacher"] = teacher_source
    result: dict[str, Any] = {"file": args.file, "out": str(out), "dataset": info.name, "finetune": run}
    if not args.no_eval:
        test_set, _ = load_data(args, "test")  # read only now: nothing above could have looked at it
        for key, model in (("start_metrics", qmodel), ("quant_metrics", tuned)):
            result[key] = _metrics(evaluate(model, test_set, class_names=info.classes, progress=not args.quiet))
        run["start_test_top1"] = result["start_metrics"]["top1"]
    dataset = dict(record.dataset) if record.dataset else {"name": info.name, "input_shape": list(info.input_shape)}
    extra = {**record.provenance, "finetune": run, "dataset": dataset,
             "float_metrics": dict(record.float_metrics) if record.float_metrics else None,
             "quant_metrics": result.get("quant_metrics")}  # the test metrics of the file now written, if measured
    save(tuned, out, extra)
    print_report(result, out)
    if args.json:
        write_json(args.json, result)
    return 0


def epoch_rows(run: dict[str, Any]) -> list[list[Any]]:
    """One row per epoch (epoch 0: the starting model), the kept one starred."""
    rows = []
    for r in run["history"]:
        lr = None if r["lr"] is None else f"{r['lr']:.3g}"
        kept = "*" if r["epoch"] == run["kept_epoch"] else ""
        rows.append([r["epoch"], r["train_loss"], 100 * r["held_out_top1"], r["held_out_loss"], lr, r["seconds"], kept])
    return rows


def print_report(result: dict[str, Any], out: Path) -> None:
    run = result["finetune"]
    print(table(EPOCH_HEADERS, epoch_rows(run)))
    chosen_by = "top-1" if run["held_out_metric"] == "top1" else "loss; top-1 there is agreement with the teacher"
    print(f"epoch 0 is the starting model; the epoch kept (*) has the best held-out {chosen_by}. Held out: "
          f"{run['held_out_images']} training images; trained on {run['train_images']}; objective {run['objective']}")
    if "quant_metrics" in result:
        print()
        size = out.stat().st_size
        print(table(METRIC_HEADERS, [metrics_row("start (test split)", result["start_metrics"], None, None, None, None),
                                     metrics_row(f"fine-tuned, epoch {run['kept_epoch']}", result["quant_metrics"],
                                                 size, None, run["train_seconds"], None)]))
    print(f"saved {out}")
