"""Round-to-nearest defaults against MCT's default PTQ on several models, with one lowbit default changed per row.

MCT 2.6.1's default PTQ and lowbit's default ``nearest`` agree on the bundled ResNet-20 at W4A8 but not on every
model. For each model (the bundled ones and any further checkpoints given as ``name=path.safetensors``), at
each width pair, on the same 1024 calibration images of the training split (top-1 on the full test split):
MCT's default PTQ, lowbit's defaults, and lowbit with one default changed at a time: activation ranges
(min/max, MSE search, percentile), weight ranges (min/max, or the least weight error, instead of the least
output error), gain correction off, bias correction off.
The mean over models of each row's difference to MCT says which default matters, independently of one model.
Run (MCT installed): python3 defaults.py --extra resnet20=r20_seed1.safetensors resnet20=r20_seed2.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from torch import nn

import lowbit
import peers
from lowbit.data import calibration_batches
from report import bundled_model, fashion_mnist_splits, md_table, publish, topic_page

VARIANTS: dict[str, dict] = {
    "lowbit defaults": {},
    "activations min/max": {"activation_observer": "minmax"},
    "activations MSE search": {"activation_observer": "mse"},
    "activations percentile": {"activation_observer": "percentile"},
    "weights min/max": {"weights_observer": "minmax"},
    "weights MSE search": {"weights_observer": "mse"},
    "no gain correction": {"gain_correction": False},
    "no bias correction": {"bias_correction": False},
}


def models(args) -> list[tuple[str, nn.Module]]:
    """The bundled models named by ``--models``, then each ``name=path`` checkpoint of ``--extra``."""
    found = [(name, bundled_model(name)) for name in args.models]
    for spec in args.extra:
        name, path = spec.split("=", 1)
        found.append((f"{name} ({path})", bundled_model(name, path)))
    return found


def provenance(extra: list[str]) -> str:
    """Where each further checkpoint came from: the training recipe ``lowbit train`` writes beside it."""
    lines = []
    for spec in extra:
        path = Path(spec.split("=", 1)[1])
        recipe = path.with_suffix(".json")
        if recipe.is_file():
            r = json.loads(recipe.read_text())
            o = r.get("options", {})
            lines.append(f"`{path.name}`: {r.get('model')} trained on {r.get('dataset')} by `lowbit train` "
                         f"({o.get('epochs')} epochs, seed {o.get('seed')}, {o.get('optimizer')} lr {o.get('lr')}), "
                         "not in the repository")
        else:
            lines.append(f"`{path.name}`: no training recipe beside it")
    return (" Further checkpoints: " + "; ".join(lines) + ".") if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=["resnet20", "mobilenet_v2_small", "vit_small"])
    parser.add_argument("--extra", nargs="*", default=[], help="further checkpoints, as name=path.safetensors")
    parser.add_argument("--widths", nargs="+", default=["4/8", "4/4"], help="W/A pairs")
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = fashion_mnist_splits()
    calib = calibration_batches(train, args.calib_images, 64, seed=0)
    rows, gaps = [], {}
    mct = f"MCT {peers.mct_version()} PTQ defaults"
    for name, model in models(args):
        float_top1 = 100 * lowbit.evaluate(model, test).top1
        for width in args.widths:
            w, a = (int(v) for v in width.split("/"))
            reference = 100 * lowbit.evaluate(peers.mct_ptq(model, calib, w, a), test).top1
            rows.append([name, float_top1, f"W{w}A{a}", mct, reference, 0.0])
            print(rows[-1], flush=True)
            for variant, options in VARIANTS.items():
                q = lowbit.quantize(model, calib, weights_bits=w, activation_bits=a, **options)
                top1 = 100 * lowbit.evaluate(q, test).top1
                rows.append([name, float_top1, f"W{w}A{a}", variant, top1, top1 - reference])
                gaps.setdefault((f"W{w}A{a}", variant), []).append(top1 - reference)
                print(rows[-1], flush=True)
    summary = [[width, variant, statistics.mean(d), min(d), max(d), sum(x >= 0 for x in d), len(d)]
               for (width, variant), d in gaps.items()]
    body = (md_table(["model", "float top-1 %", "widths", "setting", "test top-1 %", "vs MCT"], rows)
            + "\n\nDifference to MCT's default PTQ over the models above:\n\n"
            + md_table(["widths", "setting", "mean", "min", "max", "models at least as accurate", "models"], summary)
            + "\n\nlowbit's defaults: per-channel weight ranges searched for the least error in each layer's output "
              "on the calibration images (below 8 bits), with gain and bias correction; activation ranges by "
              "min/max at 8 bits and MSE search below. MCT's: per-channel symmetric weights with MSE thresholds, "
              "power-of-two activation thresholds with MSE, weight bias correction on." + provenance(args.extra))
    publish("defaults", "Round-to-nearest defaults against MCT's, several models", body, topic_page("bitwidths"),
            write=not args.no_write)


if __name__ == "__main__":
    main()
