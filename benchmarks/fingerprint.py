"""Fingerprints of quantization results, to show that a refactoring left behaviour unchanged.

For each bundled model and setting (W4A8 nearest, W4A4 BRECQ by default) the script quantizes with a fixed
seed, saves the model, and records a SHA-256 of every stored tensor (integer codes, scales, zero points,
float biases; the header is left out since it names the lowbit version) together with the top-1 accuracy on
the first ``--test-images`` test images. ``--out`` writes the fingerprints as JSON; ``--compare`` checks them
against an earlier run and exits 1 on any difference.

Run: python3 benchmarks/fingerprint.py --out before.json ... then --compare before.json after the change.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file
from torch.utils.data import Subset

import lowbit
from lowbit.data import calibration_batches, load_dataset
from lowbit.io.payload import file_digest
from report import bundled_model

SETTINGS = {"w4a8-nearest": dict(weights_bits=4, activation_bits=8, method="nearest"),
            "w4a4-brecq": dict(weights_bits=4, activation_bits=4, method="brecq")}


def tensor_digest(path: Path) -> str:
    """SHA-256 over every stored tensor, by name, dtype, shape and bytes (the file digest without the header)."""
    return file_digest("", load_file(str(path)))


def fingerprints(models: list[str], settings: list[str], iters: int, calib_images: int, test_images: int) -> dict:
    train, _ = load_dataset("fashion-mnist", "train")
    test, _ = load_dataset("fashion-mnist", "test")
    test = Subset(test, range(min(test_images, len(test))))
    calib = calibration_batches(train, calib_images, 64, seed=0)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in models:
            model = bundled_model(model_name)
            for setting in settings:
                kw = dict(SETTINGS[setting])
                if kw["method"] != "nearest":
                    kw["iters"] = iters
                q = lowbit.quantize(model, calib, seed=0, calib_images=calib_images, **kw)
                path = lowbit.save(q, Path(tmp) / f"{model_name}_{setting}.lowbit")
                top1 = lowbit.evaluate(lowbit.load(path), test).top1
                key = f"{model_name} {setting}"
                out[key] = {"tensors_sha256": tensor_digest(path), "top1": top1}
                print(f"{key}: top-1 {100 * top1:.2f}%  tensors {out[key]['tensors_sha256'][:16]}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,mobilenet_v2_small,vit_small")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--iters", type=int, default=200, help="learned-rounding steps per block")
    parser.add_argument("--calib-images", type=int, default=256)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--out", help="write the fingerprints to this JSON file")
    parser.add_argument("--compare", help="compare with the fingerprints in this JSON file")
    args = parser.parse_args()
    result = fingerprints(args.models.split(","), args.settings.split(","), args.iters, args.calib_images,
                          args.test_images)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        changed = [k for k in result if before.get(k) != result[k]]
        for k in changed:
            print(f"CHANGED {k}: {before.get(k)} -> {result[k]}")
        print("identical" if not changed else f"{len(changed)} of {len(result)} changed")
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
