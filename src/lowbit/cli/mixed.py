"""The mixed-precision options of ``lowbit mixed`` and ``lowbit quantize --mixed-precision`` (bit allocation
under a size or BOPs budget), and the printed allocation table. The run itself, which also writes the
allocation as CSV and PNG beside the model, is :mod:`lowbit.run`'s."""

from __future__ import annotations

import argparse

from lowbit.errors import LowbitError
from lowbit.mixed import METRICS, Allocation, Budget
from lowbit.mixed.allocation_files import ALLOCATION_HEADERS, allocation_rows
from lowbit.mixed.budget import SIZE_MEASURES
from lowbit.mixed.drop_search import probes_of
from lowbit.report import human_bytes, table


def add_mixed_args(p: argparse.ArgumentParser, flag: bool) -> None:
    """Budget options; ``flag`` adds ``--mixed-precision`` (for ``quantize``, where mixing is opt-in)."""
    g = p.add_argument_group("mixed precision")
    if flag:
        g.add_argument("--mixed-precision", action="store_true", help="choose bits per layer under the budget below")
    g.add_argument("--weights-cr", type=float, help="weights compression against float32, e.g. 8")
    g.add_argument("--model-size", type=float, metavar="MIB", help="weights size cap in MiB (OMPQ's Mb), e.g. 4.5")
    g.add_argument("--gbops", type=float, help="cap on 10^9 bit operations (MACs x weight bits x input bits)")
    g.add_argument("--total-cr", type=float, help="total memory (weights + the largest activation tensor) "
                   "compression against float32, EPTQ's target, e.g. 8; mixes activations too (see "
                   "--activation-candidates)")
    g.add_argument("--activation-cr", type=float, help="compression of the largest activation tensor alone")
    g.add_argument("--max-drop", type=float, metavar="PCT",
                   help="instead of a size: the smallest weights that change the top-1 class of at most PCT%% of "
                        "held-out training images against the float model (no labels used), e.g. 0.5")
    g.add_argument("--holdout-images", type=int, default=512,
                   help="with --max-drop: images set aside from calibration to check it on (default: %(default)s)")
    g.add_argument("--size-measure", choices=SIZE_MEASURES, default="file",
                   help="what --weights-cr/--model-size count: the file's codes, scales and zero points, or weight "
                        "codes only as MCT and OMPQ tables do (default: %(default)s)")
    g.add_argument("--bits", default="2,4,8", help="weight bit options (default: %(default)s)")
    g.add_argument("--activation-candidates", metavar="BITS",
                   help="also mix layer-input activations over these bits, e.g. 4,8 (default: --activation-bits)")
    g.add_argument("--sensitivity", choices=tuple(METRICS), default="hessian",
                   help="layer sensitivity metric (default: %(default)s)")
    g.add_argument("--beta", type=float, help="orthogonality only: OMPQ's bit-difference weight beta (default 10)")
    g.add_argument("--sensitivity-images", type=int, default=256,
                   help="calibration images used to score layers (default: %(default)s)")


def sensitivity_options(args: argparse.Namespace) -> dict[str, float]:
    """The metric's own options given on the command line (only ``--beta`` so far)."""
    if args.beta is not None and args.sensitivity != "orthogonality":
        raise LowbitError(f"--beta applies to --sensitivity orthogonality, not {args.sensitivity}; drop it")
    return {} if args.beta is None else {"beta": args.beta}


def mixed_keywords(args: argparse.Namespace, budget: Budget | None, **metric_options: object) -> dict | None:
    """The mixed-precision keywords of :func:`lowbit.quantize` for ``budget`` (the options', from
    :func:`budget_from_args`; None when mixing is off); ``metric_options`` adds a command's own sensitivity
    options to ``--beta``."""
    if budget is None:
        return None
    return {"mixed": budget, "sensitivity": args.sensitivity, "sensitivity_images": args.sensitivity_images,
            "sensitivity_options": {**sensitivity_options(args), **metric_options}}


def _bit_list(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise LowbitError(f"bad {option} {text!r}; write comma-separated integers, e.g. 2,4,8") from None


def budget_from_args(args: argparse.Namespace) -> Budget | None:
    """The budget asked for on the command line, or None when mixed precision is off."""
    if not hasattr(args, "sensitivity"):  # a command without mixed-precision options
        return None
    targets = (args.weights_cr, args.model_size, args.gbops, args.total_cr, args.activation_cr, args.max_drop)
    if not getattr(args, "mixed_precision", True):
        if any(v is not None for v in targets):
            raise LowbitError("a budget was given without --mixed-precision; add it (or use `lowbit mixed`)")
        return None
    if args.sensitivity_images < 2:
        raise LowbitError(f"--sensitivity-images must be at least 2, got {args.sensitivity_images}")
    if all(v is None for v in targets):
        raise LowbitError("mixed precision needs a budget: --weights-cr, --model-size, --gbops, --total-cr, "
                          "--activation-cr or --max-drop")
    if args.max_drop is not None:
        flags = ("--weights-cr", "--model-size", "--gbops", "--total-cr", "--activation-cr", "--activation-candidates")
        given = [f for f, v in zip(flags, (*targets[:-1], args.activation_candidates)) if v is not None]
        if given:
            raise LowbitError(f"--max-drop chooses the size itself; drop {', '.join(given)}")
    bits = _bit_list(args.bits, "--bits")
    acts = _bit_list(args.activation_candidates, "--activation-candidates") if args.activation_candidates else None
    return Budget(args.weights_cr, args.model_size, args.gbops, bits, acts, args.size_measure, args.total_cr,
                  args.activation_cr, args.max_drop, args.holdout_images)


def print_allocation(allocation: Allocation) -> None:
    rows = [[*r[:4], f"{r[4]:.3g}", *r[5:]] for r in allocation_rows(allocation)]
    print(table(ALLOCATION_HEADERS, rows))
    counted = "codes only" if allocation.budget.size_measure == "codes" else "as stored"
    print(f"weights ({counted}) {human_bytes(allocation.weight_bytes)} of {human_bytes(allocation.float_bytes)} float32 "
          f"({allocation.compression:.2f}x smaller), {allocation.bops / 1e9:.3f} GBOPs; {allocation.sensitivity} "
          f"sensitivity in {allocation.seconds.get('sensitivity', 0):.1f} s, solved in "
          f"{allocation.seconds.get('solve', 0):.3f} s")
    if allocation.budget.total_cr is not None or allocation.budget.activation_cr is not None:
        print(f"largest activation {human_bytes(allocation.activation_bytes)} of "
              f"{human_bytes(allocation.float_activation_bytes)} float32; total memory "
              f"{allocation.total_compression:.2f}x smaller")
    print(f"bit_cfg: {allocation.bit_cfg}")


def print_search(mixed: dict) -> None:
    """The candidates an accuracy target (``--max-drop``) tried, smallest first, and which one was kept."""
    search = mixed["search"]
    kept = (mixed["compression"], search["changed_pct"], search.get("float_activations", 0))
    rows = [[f"{p.compression:.2f}x", p.float_activations, f"{p.changed_pct:.2f}",
             "yes" if p.passes(search["max_drop"]) else "no",
             "<- kept" if (p.compression, p.changed_pct, p.float_activations) == kept else ""]
            for p in sorted(probes_of(mixed), key=lambda p: (-p.compression, p.float_activations))]
    print(table(("weights smaller", "activation grids left out", "held-out classes changed %",
                 f"within {search['max_drop']:g}%", ""), rows))
    print(f"checked on {search['holdout_images']} training images set aside from calibration, against the float "
          "model's classes; a changed class is the only way top-1 can drop")
