"""``lowbit eval`` and ``lowbit info``: evaluate or describe a saved ``.lowbit`` file (eval also takes exported
``.onnx`` files, run by onnxruntime)."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from lowbit.api import load
from lowbit.cli.common import add_data_args, load_data, refuse_codec_file
from lowbit.cli.outputs import check_outputs, cli_inputs
from lowbit.cli.quantize import write_json
from lowbit.coverage import Coverage
from lowbit.deploy.providers import PROVIDERS
from lowbit.errors import LowbitError
from lowbit.evaluate import evaluate
from lowbit.io.lowbit_file import read_metadata
from lowbit.mixed.budget import TARGETS
from lowbit.models.weights_source import PROVENANCE_KEY
from lowbit.report import METRIC_HEADERS, human_bytes, metrics_row, table


def add_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate a .lowbit file (or an exported .onnx file) on a dataset's test split")
    e.add_argument("file", help="a .lowbit file, or an .onnx file run by onnxruntime")
    add_data_args(e, default=None)
    e.add_argument("--json", help="write the metrics to this JSON file")
    e.add_argument("--provider", default="cpu", choices=list(PROVIDERS),
                   help="onnxruntime's execution provider for an .onnx file (cuda and tensorrt come with "
                        "onnxruntime-gpu; default: %(default)s)")
    e.add_argument("--per-class", action="store_true", help="also print per-class precision, recall and F1")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=run_eval)
    i = sub.add_parser("info", help="print what a .lowbit file contains")
    i.add_argument("file")
    i.set_defaults(func=run_info)


def _load_onnx(args: argparse.Namespace):
    """An exported file under onnxruntime, evaluated on the dataset named in it unless --dataset says otherwise."""
    from lowbit.deploy.runtime import OnnxClassifier

    model = OnnxClassifier(args.file, provider=args.provider)
    import onnx

    props = {p.key: p.value for p in onnx.load(args.file, load_external_data=False).metadata_props}
    args.dataset = args.dataset or props.get("lowbit.dataset") or "fashion-mnist"
    return model


def run_eval(args: argparse.Namespace) -> int:
    check_outputs(cli_inputs(args, {"file": args.file}), {"--json": args.json})
    onnx_file = Path(args.file).suffix.lower() == ".onnx"
    if onnx_file:
        qmodel, meta = _load_onnx(args), {}
    else:
        if args.provider != "cpu":
            raise LowbitError(f"--provider runs .onnx files in onnxruntime; {args.file} runs in PyTorch (export it "
                              "with `lowbit export` to run it there)")
        meta = read_metadata(args.file)
        refuse_codec_file(meta.get("arch"), args.file, "eval")
        args.dataset = args.dataset or (meta.get("dataset") or {}).get("name") or "fashion-mnist"
        qmodel = load(args.file)
    test_set, info = load_data(args, "test", (meta.get("arch") or {}).get("name"))
    if onnx_file:
        qmodel.check_input(info.input_shape, info.num_classes)
    start = time.perf_counter()
    metrics = evaluate(qmodel, test_set, class_names=info.classes, progress=not args.quiet)
    seconds = time.perf_counter() - start
    rows = []
    if meta.get("float_metrics"):
        rows.append(metrics_row("float32 (at quantization)", meta["float_metrics"], None, None, None, None))
    rows.append(metrics_row(Path(args.file).name, metrics.to_dict(), Path(args.file).stat().st_size, None, None, seconds))
    print(table(METRIC_HEADERS, rows))
    if args.per_class:
        print()
        print(table(("class", "precision %", "recall %", "F1 %", "support"),
                    [[c.name or c.index, 100 * c.precision, 100 * c.recall, 100 * c.f1, c.support]
                     for c in metrics.per_class]))
    if args.json:
        write_json(args.json, {"file": args.file, "dataset": info.name, "metrics": metrics.to_dict(),
                               "eval_seconds": seconds})
    return 0


def _provenance_lines(meta: dict) -> list[tuple[str, str]]:
    """How the model was made beyond its config: the mixed-precision budget met, fine-tuning, and any other
    plain values recorded (calibration source, timings)."""
    lines = []
    mixed = meta.get("mixed")
    if mixed:
        budget = {k: v for k, v in mixed["budget"].items() if k in (*TARGETS, "max_drop") and v is not None}
        search = mixed.get("search")
        checked = (f" ({search['changed_pct']:.2f}% of {search['holdout_images']} held-out classes changed"
                   + (f", {search['float_activations']} activation grids left out"
                      if search.get("float_activations") else "") + ")" if search else "")
        lines.append(("mixed precision", f"{mixed['sensitivity']} sensitivity, budget "
                      f"{', '.join(f'{k}={v:g}' for k, v in budget.items())}{checked}; weights "
                      f"{mixed['compression']:.2f}x smaller" + (f", total memory {mixed['total_compression']:.2f}x"
                                                                if mixed.get("total_compression") else "")))
    extra = meta.get("provenance") or {}
    tuned = extra.get("finetune")
    if isinstance(tuned, dict) and tuned.get("objective") == "rate_distortion":  # a codec's run
        options = tuned.get("options", {})
        held = ", the starting rate held" if options.get("hold_rate") is True else ""
        lines.append(("fine-tuned", f"{options.get('steps')} steps on the rate-distortion loss (lambda "
                      f"{options.get('lmbda')}{held}, lr {options.get('lr')}), kept step {tuned.get('kept_step')}; "
                      f"{tuned.get('train_photos')} training photos, {tuned.get('held_out_photos')} held out"))
    elif isinstance(tuned, dict):
        options = tuned.get("options", {})
        lines.append(("fine-tuned", f"{len(tuned.get('history', [])) - 1} epoch(s) of {options.get('epochs')}, kept "
                      f"epoch {tuned.get('kept_epoch')} ({tuned.get('objective')}, lr {options.get('lr')}, "
                      f"{tuned.get('train_images')} training images, {tuned.get('held_out_images')} held out)"))
    source = extra.get(PROVENANCE_KEY)
    if isinstance(source, dict) and isinstance(source.get("sha256"), str):
        where = f"bundled {source.get('bundled')}" if "bundled" in source else f"{source.get('path')}"
        lines.append(("float weights", f"{where} (sha256 {source['sha256'][:12]})"))
    for key, value in sorted(extra.items()):
        if key != "finetune" and isinstance(value, (str, int, float, bool)):
            lines.append((key.replace("_", " "), str(value)))
    return lines


def run_info(args: argparse.Namespace) -> int:
    from lowbit.tasks import rebuild_setup

    meta = read_metadata(args.file)
    rebuild_setup(meta.get("arch"))  # a codec's own layer types (GDN) are named among the quantized ones
    cfg = meta["config"]
    acts = cfg.get("activations")
    bits = Counter(str(b) for b in meta["bits"].values())
    arch = meta.get("arch") or {}
    lines = [
        ("file", f"{args.file} ({human_bytes(Path(args.file).stat().st_size)})"),
        ("lowbit version", meta.get("lowbit_version")),
        ("architecture", f"{arch.get('name', 'custom (pass model= to load)')} {arch.get('kwargs', '')}".strip()),
        ("graph mode", meta.get("mode")),
        ("method", cfg.get("method")),
        ("weights", f"{cfg['weights']['bits']} bits, {cfg['weights']['granularity']}, observer {cfg['weights']['observer']}"),
        ("activations", "float" if not acts else
         f"{acts['bits']} bits, {'dynamic' if acts['dynamic'] else 'static'}, observer {acts['observer']}"
         + (", residual stream float" if cfg.get("float_residual_stream") else "")),
        ("layers by bits", ", ".join(f"{n} x {b}" for b, n in sorted(bits.items()))),
        ("overrides", ", ".join(o["pattern"] for o in cfg.get("overrides", [])) or "none"),
        ("float parameters", Coverage(**meta["coverage"]).describe() if meta.get("coverage") else "not recorded"),
    ]
    for key in ("float_metrics", "quant_metrics"):
        if meta.get(key):
            lines.append((key.replace("_", " "), f"top-1 {100 * meta[key]['top1']:.2f}%, F1 {100 * meta[key]['f1']:.2f}%"))
    lines += _provenance_lines(meta)
    width = max(len(k) for k, _ in lines)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in lines))
    print()
    print(table(("layer", "bits"), sorted(meta["bits"].items())))
    return 0
