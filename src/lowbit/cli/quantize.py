"""``lowbit quantize`` and ``lowbit mixed``: options in, :mod:`lowbit.run` called, a table printed."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from lowbit.cli.common import (add_data_args, add_model_args, add_quant_args, config_from_args, float_checkpoint,
                               load_data, load_float_model, resolve_dataset, resolve_device)
from lowbit.cli.mixed import add_mixed_args, budget_from_args, mixed_keywords, print_allocation, print_search
from lowbit.cli.outputs import check_outputs, cli_inputs
from lowbit.cli.synth import add_calib_args, calibration_data
from lowbit.config import QuantConfig
from lowbit.errors import LowbitError
from lowbit.io.atomic import atomic_path
from lowbit.mixed import Allocation, Budget
from lowbit.mixed.allocation_files import allocation_paths
from lowbit.mixed.bit_cfg import apply_bit_cfg, parse_bit_cfg
from lowbit.models.weights_source import describe_weights
from lowbit.report import METRIC_HEADERS, metrics_row, table
from lowbit.run import quantize_evaluate_save


def add_parsers(sub: argparse._SubParsersAction) -> None:
    # `mixed` is `quantize` with mixed precision always on (no --mixed-precision flag)
    for name, summary, mixed_flag in (("quantize", "quantize a model and report float vs quantized", True),
                                      ("mixed", "mixed precision: bits per layer under a size or BOPs budget", False)):
        p = sub.add_parser(name, help=summary)
        add_model_args(p)
        add_data_args(p, default=None)
        add_quant_args(p)
        add_calib_args(p)
        add_mixed_args(p, flag=mixed_flag)
        add_run_args(p)
        p.set_defaults(func=run_quantize)


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", help="where to write the .lowbit file (default: <model>_w<W>a<A>.lowbit)")
    g.add_argument("--per-layer", action="store_true", help="also print per-layer weight and output SQNR")
    g.add_argument("--json", help="write the reported figures to this JSON file")
    g.add_argument("--no-eval", action="store_true", help="skip evaluation (quantize and save only)")
    g.add_argument("--also-weights-only", action="store_true",
                   help="also quantize the weights alone on the same calibration images and report both accuracies "
                        "(DGH's two rows from one synthesis); only the fully quantized model is saved")
    g.add_argument("--bit-cfg", metavar="LIST", help="one weight width per quantized layer in model order, as "
                   "`lowbit mixed` prints it (OMPQ's bit_cfg), e.g. '[8,4,4,2,...,8]'")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def default_out(model: str, config: QuantConfig, budget: Budget | None = None) -> Path:
    a = config.activations.bits if config.activations else "f"
    if budget is not None:
        target = "_".join(f"{k}{v:g}" for k, v in (("cr", budget.weights_cr), ("mib", budget.model_size_mb),
                                                     ("gbops", budget.gbops), ("drop", budget.max_drop))
                          if v is not None)
        return Path(f"{model}_mixed_{target}.lowbit")
    return Path(f"{model}_w{config.weights.bits}a{a}.lowbit")


def quantize_and_report(args: argparse.Namespace, config: QuantConfig) -> dict:
    """Turn the options into a model, data and a budget, and run :func:`lowbit.run.quantize_evaluate_save`."""
    device = resolve_device(args.device)
    resolve_dataset(args)
    train_set, info = load_data(args, "train") if args.dataset else (None, None)
    model = load_float_model(args, info).to(device)
    weights_file = float_checkpoint(args, info)
    budget = budget_from_args(args)
    if getattr(args, "bit_cfg", None):
        if budget is not None:
            raise LowbitError("--bit-cfg fixes every layer's width; drop the mixed-precision budget (or --bit-cfg)")
        config = apply_bit_cfg(model, config, parse_bit_cfg(args.bit_cfg))
    calib, calib_record = calibration_data(args, model, train_set, info, config.calib_images)
    mixed = mixed_keywords(args, budget)
    test_set = load_data(args, "test")[0] if not args.no_eval and info is not None else None
    out = Path(args.out) if args.out else default_out(args.model, config, budget)
    return quantize_evaluate_save(model, calib, config, out, model_name=args.model, info=info, test_set=test_set,
                                  calib_record=calib_record, mixed=mixed, per_layer=args.per_layer,
                                  float_weights=describe_weights(weights_file, args.model) if weights_file else None,
                                  progress=not args.quiet, device=device,
                                  weights_only_too=getattr(args, "also_weights_only", False))


def print_report(result: dict, label: str) -> None:
    ratio = result["quant_file_bytes"] / result["float_file_bytes"]
    rows = [metrics_row("float32", result.get("float_metrics"), result["float_file_bytes"], 1.0, None,
                        result.get("float_eval_seconds")),
            metrics_row(label, result.get("quant_metrics"), result["quant_file_bytes"], ratio,
                        result["quantize_seconds"], result.get("quant_eval_seconds"))]
    if "weights_only_metrics" in result:
        weights_only = replace(QuantConfig.from_dict(result["config"]), activations=None)
        rows.insert(1, metrics_row(f"{label_of(weights_only, result.get('mixed'))}, weights only",
                                   result["weights_only_metrics"], None, None, result["weights_only_quantize_seconds"],
                                   result["weights_only_eval_seconds"]))
    print(table(METRIC_HEADERS, rows))
    print(f"saved {result['out']} (quantize s: calibration and rounding; eval s: the whole test split)")
    print(result["coverage_note"])
    if "per_layer" in result:
        print()
        print(table(("layer", "bits", "params", "weight SQNR dB", "output SQNR dB"),
                    [[r["name"], r["bits"], r["params"], r["weight_sqnr"], r["output_sqnr"]] for r in result["per_layer"]]))


def label_of(config: QuantConfig, mixed: dict | None = None) -> str:
    a = "" if config.activations is None else f"A{config.activations.bits}" + ("dyn" if config.activations.dynamic else "")
    if mixed is not None:
        a = "" if config.activations is None else "Amixed" if mixed["activations"] else a
        return f"W{'/'.join(map(str, mixed['budget']['bits']))}{a} {config.method}"
    return f"W{config.weights.bits}{a} {config.method}"


def write_json(path: str, payload: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))


def planned_outputs(args: argparse.Namespace, config: QuantConfig) -> dict[str, Path | str | None]:
    """The files a quantize or mixed run will write, keyed by the option that names them (checked up front)."""
    budget = budget_from_args(args)
    out = Path(args.out) if args.out else default_out(args.model, config, budget)
    outputs: dict[str, Path | str | None] = {"--out": out, "--json": args.json}
    if budget is not None:
        outputs["--out (allocation CSV)"], outputs["--out (allocation PNG)"] = allocation_paths(out)
    return outputs


def run_quantize(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    check_outputs(cli_inputs(args), planned_outputs(args, config))
    result = quantize_and_report(args, config)
    print_report(result, label_of(config, result.get("mixed")))
    if "mixed" in result:
        print()
        print_allocation(Allocation.from_dict(result["mixed"]))
        if "search" in result["mixed"]:
            print()
            print_search(result["mixed"])
        print(f"allocation written to {' and '.join(result['allocation_files'])}")
    if args.json:
        write_json(args.json, result)
    return 0
