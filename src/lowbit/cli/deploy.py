"""``lowbit export`` and ``lowbit bench``: a ``.lowbit`` file as ONNX for onnxruntime, and how fast each form runs.

The ONNX exporter and onnxruntime are imported when these commands run, not when the CLI starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lowbit.api import load
from lowbit.cli.common import add_data_args, load_data, refuse_codec_file
from lowbit.cli.outputs import check_outputs, cli_inputs
from lowbit.cli.quantize import write_json
from lowbit.data import labelled_batches
from lowbit.deploy.export_report import ExportReport
from lowbit.deploy.exporters import EXPORTERS, export_as
from lowbit.deploy.providers import PROVIDERS
from lowbit.errors import LowbitError
from lowbit.io.lowbit_file import read_metadata
from lowbit.io.run_record import CODEC_TASK
from lowbit.models import default_input_shape
from lowbit.report import human_bytes, table


def add_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="write a .lowbit file as ONNX (QDQ form) for onnxruntime and other runtimes")
    e.add_argument("file", help="a .lowbit file (a quantized codec's: its transforms, one file each)")
    e.add_argument("--format", default=EXPORTERS.names()[0], choices=EXPORTERS.names(),
                   help="; ".join(f"{name}: {EXPORTERS[name].summary}" for name in EXPORTERS))
    e.add_argument("--out", help="the file to write (default: beside the input, with the format's suffix); for a "
                                 "codec, OUT.g_a.onnx, OUT.g_s.onnx (and OUT.h_a.onnx) are written")
    e.add_argument("--unsigned-weights", action="store_true",
                   help="onnx-qdq: store 8-bit weight codes as uint8 instead of int8: exact in onnxruntime on x86 "
                        "CPUs without VNNI even in sessions without the option session.x64quantprecision=1 "
                        "(without it the int8-weight kernel can saturate there), slower on CPUs with VNNI; "
                        "TensorRT and OpenVINO need the int8 default")
    e.add_argument("--input-shape", help="C,H,W of one input (default: the shape recorded at quantization)")
    e.add_argument("--check-images", type=int, default=1000,
                   help="test images on which the ONNX and PyTorch outputs are compared (0: no check)")
    add_data_args(e, default=None)
    e.set_defaults(func=run_export)
    b = sub.add_parser("bench", help="latency and throughput: float, simulated, onnxruntime fp32 and int8")
    b.add_argument("file", help="a .lowbit file")
    b.add_argument("--batch-size", type=int, nargs="+", default=[1, 64], help="batch sizes (default: 1 64)")
    b.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads for every form")
    b.add_argument("--repeats", type=int, default=20, help="timed runs per form and batch size (median reported)")
    b.add_argument("--warmup", type=int, default=3,
                   help="untimed runs before each turn of timed runs (at least 0.1 s of them)")
    b.add_argument("--input-shape", help="C,H,W of one input (default: the shape recorded at quantization)")
    b.add_argument("--provider", default="cpu", choices=list(PROVIDERS),
                   help="onnxruntime's execution provider; cuda and tensorrt (from onnxruntime-gpu) also run the "
                        "PyTorch forms on the GPU (default: %(default)s)")
    b.add_argument("--onnx", help="time this exported file of the model as onnxruntime int8 (the one you will "
                                  "deploy, with the options it was exported with) instead of exporting it again")
    b.add_argument("--json", help="write the timings to this JSON file")
    b.set_defaults(func=run_bench)


def input_shape(args: argparse.Namespace, meta: dict) -> tuple[int, ...]:
    """``--input-shape``, else the dataset shape saved with the model, else the architecture's usual shape."""
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.split(","))
        except ValueError:
            shape = ()
        if not shape or min(shape) < 1:
            raise LowbitError(f"bad --input-shape {args.input_shape!r}; write C,H,W, e.g. 3,224,224")
        return shape
    if (meta.get("dataset") or {}).get("input_shape"):
        return tuple(meta["dataset"]["input_shape"])
    if (meta.get("arch") or {}).get("name"):
        return default_input_shape(meta["arch"]["name"])
    raise LowbitError("this file records no input shape; pass --input-shape C,H,W")


def _check_outputs(args: argparse.Namespace, meta: dict, qmodel: torch.nn.Module, onnx_path: Path) -> str:
    """Compare the ONNX file under onnxruntime with the PyTorch model on test images."""
    from lowbit.deploy.runtime import OnnxClassifier

    args.dataset = args.dataset or (meta.get("dataset") or {}).get("name")
    if not args.dataset or args.check_images <= 0:
        return "outputs not compared (no dataset recorded; pass --dataset to compare on its test images)"
    test_set, _ = load_data(args, "test")
    runtime = OnnxClassifier(onnx_path)
    agree, total, max_diff = 0, 0, 0.0
    with torch.inference_mode():
        for x, _ in labelled_batches(test_set, 250):
            x = x[: args.check_images - total]
            if len(x) == 0:
                break
            ours, theirs = qmodel(x), runtime(x)
            agree += int((ours.argmax(1) == theirs.argmax(1)).sum())
            max_diff = max(max_diff, float((ours - theirs).abs().max()))
            total += len(x)
    return (f"onnxruntime vs lowbit on {total} {args.dataset} test images: same top-1 class for "
            f"{100 * agree / total:.2f}%, largest output difference {max_diff:.4f}")


def run_export(args: argparse.Namespace) -> int:
    source = Path(args.file)
    out = Path(args.out) if args.out else source.with_suffix(EXPORTERS[args.format].suffix)
    check_outputs(cli_inputs(args, {"file": source}), {"--out": out})
    meta = read_metadata(source)
    if (meta.get("arch") or {}).get("task") == CODEC_TASK:
        return _export_codec(args, source, out)
    qmodel = load(source)
    shape = input_shape(args, meta)
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    options: dict = {"signed_weights": False} if args.unsigned_weights else {}
    if "metadata" in EXPORTERS[args.format].options:
        options["metadata"] = {"lowbit.dataset": str((meta.get("dataset") or {}).get("name") or ""),
                               "lowbit.source": source.name}
    report = export_as(args.format, qmodel, out, example, **options)
    if out.suffix == ".onnx":
        _print_onnx_summary(args, meta, qmodel, example, report)
    else:
        print(f"wrote {out} ({human_bytes(report.bytes)})")
    return 0


def _export_codec(args: argparse.Namespace, source: Path, out: Path) -> int:
    """A quantized codec's transforms, one ONNX file each beside ``out`` (see :mod:`lowbit.codec.onnx_transforms`)."""
    from lowbit.codec.exact import parameter_networks
    from lowbit.codec.onnx_transforms import export_transforms, transform_paths
    from lowbit.codec.task import exact_entropy_parameters
    from lowbit.codec.zoo import open_codec
    from lowbit.deploy.runtime import kernel_summary, optimized_op_counts

    if args.format != EXPORTERS.names()[0] or args.unsigned_weights or args.input_shape:
        raise LowbitError("a codec exports its transforms as ONNX QDQ files with int8 weights, for images of any "
                          "size: drop --format, --unsigned-weights and --input-shape")
    codec = open_codec(str(source))
    paths = transform_paths(out, codec.model)
    check_outputs(cli_inputs(args, {"file": source}), {f"--out ({name})": path for name, path in paths.items()})
    reports = export_transforms(codec.model, out, codec.digest)
    for name, report in reports.items():
        integer, floating = kernel_summary(optimized_op_counts(report.path))
        print(f"wrote {report.path} ({human_bytes(report.bytes)}): {name}, any batch and image size")
        print(f"  onnxruntime (CPU) runs {integer} integer and {floating} float convolutions/matmuls")
        for line in report.float_compute:
            print(f"  in float: {line}")
    kept = "the entropy models and the networks that compute their parameters" \
        if parameter_networks(codec.model) else "the entropy models"
    print(f"{kept} stay in lowbit; run the codec with these files: lowbit codec eval --model {source} --onnx {out}")
    exactness = exact_entropy_parameters(codec.model)
    if exactness is not None:
        print(exactness)
    return 0


def _print_onnx_summary(args: argparse.Namespace, meta: dict, qmodel: torch.nn.Module, example: torch.Tensor,
                        report: ExportReport) -> None:
    """Size against the float32 parameters, which kernels onnxruntime picks, and agreement on test images."""
    from lowbit.deploy.runtime import kernel_summary, optimized_op_counts, x86_without_vnni

    out = report.path
    # what a float ONNX file stores, less its small graph: exporting the float model as well took seconds
    float_bytes = 4 * sum(p.numel() for p in qmodel.parameters())
    counts = optimized_op_counts(out)
    integer, floating = kernel_summary(counts)
    narrow = (f"; {report.narrowed_initializers} weight tensors in 4-bit or float16 types"
              if report.narrowed_initializers else "")
    print(f"wrote {out} ({human_bytes(report.bytes)}, {report.bytes / float_bytes:.3f}x the float32 parameters "
          f"of {human_bytes(float_bytes)}{narrow})")
    kernels = ", ".join(f"{op} x{n}" for op, n in sorted(counts.items()) if n and op.startswith(("QLinear", "QGemm",
                        "MatMulInteger", "ConvInteger", "DynamicQuantize")))
    print(f"onnxruntime (CPU) runs {integer} integer kernels ({kernels or 'none'}) and {floating} float "
          "convolutions/matmuls")
    for line in report.float_compute:
        print(f"  in float: {line}")
    if not args.unsigned_weights and x86_without_vnni() and _has_8_bit_weights(qmodel):
        print("note: this CPU has no VNNI; onnxruntime's kernel for int8 weights can saturate here unless the "
              "session sets the option session.x64quantprecision=1, as lowbit's checks do (exact, slower kernels; "
              "or export with --unsigned-weights); OpenVINO's can too. 7-bit weights (--weights-bits 7) cannot "
              "saturate and keep the fast kernels")
    print(_check_outputs(args, meta, qmodel, out))


def run_bench(args: argparse.Namespace) -> int:
    from lowbit.deploy.bench import BLOCK, FORMS, SETTLE_S, bench_model
    from lowbit.deploy.runtime import x86_without_vnni

    check_outputs({"file": args.file, "--onnx": args.onnx}, {"--json": args.json})
    meta = read_metadata(args.file)
    refuse_codec_file(meta.get("arch"), args.file, "bench")
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0 or min(args.batch_size) < 1:
        raise LowbitError("--threads, --repeats and --batch-size must be at least 1 and --warmup at least 0")
    qmodel = load(args.file)
    timings = bench_model(qmodel, input_shape(args, meta), args.batch_size, args.threads, args.warmup, args.repeats,
                          provider=args.provider, int8_file=args.onnx)
    rows = []
    for t in timings:
        base = next(b for b in timings if b.batch_size == t.batch_size and b.form == FORMS[0])
        rows.append([t.form, t.batch_size, 1000 * t.median_s, t.images_per_s, f"{base.median_s / t.median_s:.2f}x"])
    print(table(("form", "batch", "median ms", "images/s", "speed vs float"), rows))
    where = "on the CPU" if args.provider == "cpu" else (f"on the GPU (onnxruntime's {args.provider} provider, "
                                                         "its times including the copies to and from the GPU)")
    print(f"{args.threads} thread(s), {where}, median of {args.repeats} runs taken in turns of {BLOCK}, each turn "
          f"after at least {args.warmup} untimed runs and {SETTLE_S} s")
    if args.provider == "cpu" and x86_without_vnni() and _has_8_bit_weights(qmodel) and not args.onnx:
        print("this CPU has no VNNI: onnxruntime int8 multiplies 8-bit weights with its exact uint8 kernels "
              "(session.x64quantprecision=1), slower here than its int8 kernels, which can saturate; 7-bit weights "
              "(--weights-bits 7) cannot saturate and run on the fast kernels")
    if args.json:
        write_json(args.json, {"file": args.file, "onnx": args.onnx, "timings": [t.to_dict() for t in timings]})
    return 0


def _has_8_bit_weights(qmodel: torch.nn.Module) -> bool:
    """Whether some weight codes are the 8-bit signed ones that ``--unsigned-weights`` would store as uint8."""
    from lowbit.deploy.exported_weight import store_unsigned
    from lowbit.layers import quant_layers

    return any(not layer.weight_quant.spec.is_fp16 and store_unsigned(*layer.weight_quant.qrange, False)
               for _, layer in quant_layers(qmodel))
