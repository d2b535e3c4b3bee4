"""Mixed precision's close calls, repeated over calibration draws: mixed against uniform W4 and against MCT.

At weights compression 6 and 8 every contender sits within a few tenths of a point of float, where one run's
order depends on which 1024 training images calibrate it. For each seed, a fresh draw of calibration images
(and the methods' seed) feeds, on the same images: uniform W4A8 with nearest and learned rounding, mixed
precision (``hessian`` sensitivity, bit options 2/4/8, A8) with both, and MCT 2.6.1's mixed precision at the
same budgets. Sizes count weight codes only (MCT's weights-memory measure). Reports each run, the mean and
standard deviation per setting, and paired differences. Metrics: the full test split. ``--method nearest``
runs round-to-nearest alone, cheap enough for many draws; ``--weights-observer minmax`` (or ``percentile``) sets
every weight range another way than lowbit's default MSE search, to compare range rules.

Peers within one rounding family: round-to-nearest mixed precision is paired with MCT's mixed-precision PTQ, and
learned rounding with MCT's mixed precision followed by its GPTQ (``--mct-gptq``, about ten minutes per run
on one CPU core for resnet20), both given about ``--steps`` optimization steps over the whole model at the same
batch (lowbit spreads them over its blocks, MCT runs whole-model epochs over the calibration batches).
Run: python3 benchmarks/mixed_seeds.py --models resnet20 --seeds 0 1 2 --crs 8 --mct --mct-gptq
"""

from __future__ import annotations

import argparse
import statistics

import torch

import lowbit
import peers
from lowbit.config import QuantConfig
from lowbit.data import calibration_batches
from lowbit.mixed import Budget, analyze, solve_budget
from lowbit.spec import OBSERVERS
from rounding import mct_epochs, steps_per_unit
from report import bundled_model, fashion_mnist_splits, float_weight_bytes, md_table, publish, topic_page

SENSITIVITY_IMAGES = 256
DEFAULT_CRS = [6.0, 8.0]


def methods(args) -> list[str]:
    """Round-to-nearest, then the learned rounding method unless that is nearest too."""
    return list(dict.fromkeys(("nearest", args.method)))


def section_key(name: str, args) -> str:
    """One section per model, step count, budget list and weight observer, so each variant keeps its own table."""
    steps = "nearest" if args.method == "nearest" else f"{args.steps}-total"
    crs = "" if args.crs == DEFAULT_CRS else "-CR" + "-".join(f"{cr:g}" for cr in args.crs)
    observer = f"-{args.weights_observer}-weights" if args.weights_observer else ""
    return f"mixed-seeds-{name}-{steps}{crs}{observer}"


def run_seed(model: torch.nn.Module, seed: int, args, train, test, float_bytes: int) -> dict[str, float]:
    """Top-1 (%) of every setting with calibration draw ``seed``."""
    calib = calibration_batches(train, args.calib_images, args.batch, seed=seed)
    results: dict[str, float] = {}

    def record(setting: str, q: torch.nn.Module) -> None:
        results[setting] = 100 * lowbit.evaluate(q, test).top1
        print(f"seed {seed} {setting}: {results[setting]:.2f}", flush=True)

    iters = {m: steps_per_unit(model, m, args.steps, None) for m in methods(args) if m != "nearest"}

    def options(method: str) -> dict:
        return {"iters": iters[method], "batch_size": args.batch} if method in iters else {}

    for method in methods(args):
        record(f"uniform W4A8 {method}",
               lowbit.quantize(model, calib, weights_bits=4, activation_bits=8, method=method, seed=seed,
                               weights_observer=args.weights_observer, **options(method)))
    base = QuantConfig.from_bits(8, 8, seed=seed, weights_observer=args.weights_observer)
    analysis = analyze(model, torch.cat(calib)[:SENSITIVITY_IMAGES], base, (2, 4, 8), None, "hessian")
    for cr in args.crs:
        allocation = solve_budget(analysis, Budget(weights_cr=cr, size_measure="codes"))
        for method in methods(args):
            config = allocation.to_config(QuantConfig.from_bits(8, 8, method=method, method_options=options(method),
                                                            seed=seed, weights_observer=args.weights_observer))
            record(f"mixed CR {cr:g} {method}", lowbit.quantize(model, calib, config))
        if args.mct:
            record(mct_setting(cr, False), peers.mct_mixed_precision(model, calib, float_bytes / cr))
        if args.mct_gptq:
            record(mct_setting(cr, True), peers.mct_mixed_precision(model, calib, float_bytes / cr,
                                                                    gptq_epochs=mct_epochs(args.steps, len(calib))))
    return results


def mct_setting(cr: float, gptq: bool) -> str:
    return f"MCT {peers.mct_version()} mixed{' + GPTQ' if gptq else ''} CR {cr:g}"


def verdicts(runs: dict[str, list[float]], args) -> list[str]:
    """Paired differences (mean over seeds, and in how many seeds ahead) for the comparisons the targets name."""

    def paired(a: str, b: str) -> str:
        diffs = [x - y for x, y in zip(runs[a], runs[b])]
        ahead = sum(d >= 0 for d in diffs)
        return (f"{a} vs {b}: {statistics.mean(diffs):+.2f} points on average, at least as accurate in {ahead} "
                f"of {len(diffs)} draws")

    lines = [paired(f"mixed CR 8 {m}", f"uniform W4A8 {m}") for m in methods(args) if 8 in args.crs]
    for cr in args.crs:  # each rounding family against its own kind of peer
        if args.mct:
            lines.append(paired(f"mixed CR {cr:g} nearest", mct_setting(cr, False)))
        if args.mct_gptq and args.method != "nearest":
            lines.append(paired(f"mixed CR {cr:g} {args.method}", mct_setting(cr, True)))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenet_v2_small"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--crs", nargs="+", type=float, default=DEFAULT_CRS)
    parser.add_argument("--method", default="brecq", help="learned rounding method beside nearest")
    parser.add_argument("--steps", type=int, default=300, help="optimization steps over the whole model")
    parser.add_argument("--batch", type=int, default=32, help="calibration and optimization batch, both tools")
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--weights-observer", choices=OBSERVERS,
                        help="one weight observer at every width (default: lowbit's, mse)")
    parser.add_argument("--mct", action="store_true", help="also run MCT mixed precision at the same budgets")
    parser.add_argument("--mct-gptq", action="store_true",
                        help="also run MCT mixed precision followed by its GPTQ, the peer of learned rounding")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    train, test = fashion_mnist_splits()
    for name in args.models:
        model = bundled_model(name)
        float_top1 = 100 * lowbit.evaluate(model, test).top1
        float_bytes = float_weight_bytes(model)
        runs: dict[str, list[float]] = {}
        for seed in args.seeds:
            for setting, top1 in run_seed(model, seed, args, train, test, float_bytes).items():
                runs.setdefault(setting, []).append(top1)
        means = {s: statistics.mean(v) for s, v in runs.items()}
        headers = ["setting", *[f"seed {s}" for s in args.seeds], "mean", "std", "mean vs float"]
        rows = [[s, *v, means[s], statistics.stdev(v) if len(v) > 1 else 0.0, means[s] - float_top1]
                for s, v in runs.items()]
        steps = ""
        if args.method != "nearest":
            epochs = mct_epochs(args.steps, -(-args.calib_images // args.batch))
            gptq = f" and for MCT's GPTQ ({epochs} epochs over the calibration batches)" if args.mct_gptq else ""
            steps = (f"About {args.steps} optimization steps over the whole model for {args.method} (spread over "
                     f"its blocks){gptq}, batch {args.batch}. ")
        body = (f"Float top-1: {float_top1:.2f}%. {steps}Sizes in weight codes (parameters x bits / 8).\n\n"
                + md_table(headers, rows) + "\n\n" + "\n".join(f"- {line}" for line in verdicts(runs, args)))
        title = f"Mixed precision over calibration draws: {name} on Fashion-MNIST"
        title += ", round-to-nearest" if args.method == "nearest" else f", {args.steps} steps over the model"
        title += f", {args.weights_observer} weight ranges at every width" if args.weights_observer else ""
        publish(section_key(name, args), title, body, topic_page("mixed"), write=not args.no_write)


if __name__ == "__main__":
    main()
