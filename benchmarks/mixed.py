"""Mixed precision against uniform widths and against MCT's mixed precision, on Fashion-MNIST models.

For each model: uniform W8/W4/W3/W2 (activations 8 bits), then mixed precision over weight options 2/4/8 at
weights compression 6, 8, 10, 12 and 14 (A8) with each sensitivity metric, each with round-to-nearest and with
the learned rounding method (``--method``); MCT 2.6.1 mixed precision at the same
budgets (``--mct``). Calibration: 1024 training images (sensitivities on the first 256); metrics: the full test
split. Sizes are the bytes the .lowbit file stores for the quantized layers (codes, scales, zero points), or
with ``--size-measure codes`` weight bits only, the measure of MCT's weights-memory target.
Writes a table and a Pareto plot per model. Run: python3 benchmarks/mixed.py --mct
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import lowbit
import peers
from lowbit.config import QuantConfig
from lowbit.data import calibration_batches
from lowbit.errors import LowbitError
from lowbit.layers import quant_layers
from lowbit.mixed import Budget, analyze, solve_budget
from lowbit.mixed.costs import code_bytes, weight_bytes
from report import bundled_model, fashion_mnist_splits, float_weight_bytes, md_table, publish, topic_page

HEADERS = ["model", "setting", "sensitivity", "rounding", "weights KB", "x smaller", "top-1 %", "F1 %", "seconds"]
MEASURE_NOTES = {
    "file": "`x smaller` is float32 weight bytes over stored bytes (lowbit counts codes, scales and zero points "
            "exactly as the file stores them; MCT rows show its weights-memory target, which counts weight bits "
            "only).",
    "codes": "`x smaller` is float32 weight bytes over weight-code bytes (parameters x bits / 8, no scales) for "
             "every row, lowbit's budgets included (`--size-measure codes`): the measure of MCT's weights-memory "
             "target, so both tools solve the same budget."}


def counted_weight_bytes(q: torch.nn.Module, size_measure: str) -> int:
    """Weight bytes of a uniformly quantized model as the file stores them, or codes only."""
    if size_measure == "codes":
        return sum(code_bytes(l.weight.numel(), int(l.weight_quant.spec.bits)) for _, l in quant_layers(q))
    return sum(weight_bytes(l.weight.numel(), l.weight.shape[0], l.weight_quant.spec) for _, l in quant_layers(q))


def run_model(name: str, args, train, test) -> tuple[list[list], list[dict], dict[float, str]]:
    model = bundled_model(name)
    calib = calibration_batches(train, args.calib_images, 64, seed=0)
    images = torch.cat(calib)[: args.sensitivity_images]
    float_metrics = lowbit.evaluate(model, test)
    float_bytes = float_weight_bytes(model)
    rows = [[name, "float32", "-", "-", float_bytes / 1024, 1.0, 100 * float_metrics.top1, 100 * float_metrics.f1, 0.0]]
    points: list[dict] = []
    infeasible: dict[float, str] = {}

    def record(setting: str, sensitivity: str, method: str, q, seconds: float, size: int | None) -> None:
        m = lowbit.evaluate(q, test)
        size = size or counted_weight_bytes(q, args.size_measure)
        rows.append([name, setting, sensitivity, method, size / 1024, float_bytes / size, 100 * m.top1, 100 * m.f1,
                     seconds])
        points.append({"label": f"{sensitivity}/{method}" if sensitivity != "-" else f"{setting.split()[0]} {method}",
                       "kb": size / 1024, "top1": 100 * m.top1, "kind": setting.split()[0]})
        print(rows[-1], flush=True)

    for method in ("nearest", args.method):
        for bits in (8, 4, 3, 2):
            start = time.perf_counter()
            options = {"iters": args.iters} if method != "nearest" else {}
            q = lowbit.quantize(model, calib, weights_bits=bits, activation_bits=8, method=method, **options)
            record(f"uniform W{bits}A8", "-", method, q, time.perf_counter() - start, None)
    config = QuantConfig.from_bits(8, 8)
    for sensitivity in args.sensitivities:
        start = time.perf_counter()
        analysis = analyze(model, images, config, (2, 4, 8), None, sensitivity)
        analysis_seconds = time.perf_counter() - start
        print(f"{name} {sensitivity}: analysis {analysis_seconds:.1f} s", flush=True)
        for cr in args.crs:
            try:
                allocation = solve_budget(analysis, Budget(weights_cr=cr, size_measure=args.size_measure))
            except LowbitError as exc:  # stored scales put some compression ratios out of reach
                infeasible[cr] = str(exc)
                continue
            for method in ("nearest", args.method):
                start = time.perf_counter()
                cfg = allocation.to_config(QuantConfig.from_bits(8, 8, method=method,
                                                             method_options={"iters": args.iters} if method != "nearest" else {}))
                q = lowbit.quantize(model, calib, cfg)
                record(f"mixed CR {cr}", sensitivity, method, q, analysis_seconds + time.perf_counter() - start,
                       allocation.weight_bytes)
    if args.mct:
        for cr in args.crs:
            start = time.perf_counter()
            q = peers.mct_mixed_precision(model, calib, float_bytes / cr)
            record(f"MCT {peers.mct_version()} mixed CR {cr}", "MCT", "MCT", q, time.perf_counter() - start,
                   int(float_bytes / cr))
    return rows, points, infeasible


def pareto_plot(name: str, rows: list[list], points: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        series.setdefault(p["label"], []).append((p["kb"], p["top1"]))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-" if len(pts) > 1 else "s", label=label, markersize=4)
    ax.axhline(rows[0][6], color="grey", linestyle="--", linewidth=1, label="float32")
    ax.set_xlabel("weights KB (as stored)")
    ax.set_ylabel("top-1 %")
    ax.set_title(f"{name} on Fashion-MNIST: accuracy against weights size")
    ax.legend(fontsize=7)
    lo = min(p["top1"] for p in points)
    ax.set_ylim(max(lo - 1, rows[0][6] - 15), rows[0][6] + 0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenet_v2_small"])
    parser.add_argument("--crs", nargs="+", type=float, default=[6, 8, 10, 12, 14])
    parser.add_argument("--sensitivities", nargs="+", default=["hessian", "orthogonality", "measured"])
    parser.add_argument("--method", default="brecq", help="learned rounding method for the second pass")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--sensitivity-images", type=int, default=256)
    parser.add_argument("--size-measure", choices=("file", "codes"), default="file",
                        help="what sizes count: the file's codes, scales and zero points, or weight codes only")
    parser.add_argument("--mct", action="store_true", help="also run MCT mixed precision at the same budgets")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = fashion_mnist_splits()
    for name in args.models:
        rows, points, infeasible = run_model(name, args, train, test)
        suffix = "" if args.size_measure == "file" else "_codes"
        plot = topic_page("mixed").parent / f"mixed_{name}{suffix}.png"
        if not args.no_write:  # the plot belongs to the docs section, written only with it
            pareto_plot(name, rows, points, plot)
        body = (md_table(HEADERS, rows) + f"\n\n![accuracy against size]({plot.name})\n\n"
                + (MEASURE_NOTES[args.size_measure] + " `seconds` include the sensitivity analysis for mixed rows.")
                + "".join(f"\n\nlowbit at CR {cr:g}: {why}." for cr, why in infeasible.items()))
        title = f"Mixed precision: {name} on Fashion-MNIST" + (", weight codes only" if suffix else "")
        publish(f"mixed-{name}{suffix.replace('_', '-')}", title, body, topic_page("mixed"),
                write=not args.no_write)


if __name__ == "__main__":
    main()
