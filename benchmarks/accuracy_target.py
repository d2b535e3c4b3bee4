"""Accuracy targets: the smallest mixed-precision model within a share of changed classes, against NNCF's
quantization with accuracy control.

For each bundled model and each target t (percentage points), both tools get the same 1024 calibration images
(a seeded draw of the training split) and the same 512 further training images to check the target on, and
the same metric on them: the share of images whose top-1 class differs from the float model's (no labels).
- lowbit: ``lowbit.quantize(..., mixed=Budget(max_drop=t, bits=(2, 4, 8)))``, weights 2/4/8 bits with 8-bit
  activations (some left float when the widest weights miss the target), round-to-nearest, exported to ONNX;
  where it refuses a target, again with 16 among the weight widths, as the refusal suggests;
- NNCF (``--nncf``, NNCF installed): ``nncf.quantize_with_accuracy_control`` on the float ONNX file, with the
  same images and a validation function computing that metric in onnxruntime, ``max_drop=t/100`` (absolute);
  it quantizes at 8 bits (weights and activations) and returns layers to float until the target holds.
Reference rows: lowbit at uniform W8A8 and W4A8, and NNCF's plain ``nncf.quantize`` W8A8, on the same images.
Every ONNX file is scored in onnxruntime on the full test split: top-1, the share of test images whose class
differs from the float model's, and its size against the float ONNX file.
Run: python3 accuracy_target.py [--nncf] [--models resnet20 mobilenet_v2_small] [--targets 0 0.2 0.5 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import lowbit
from lowbit.data import calibration_batches
from lowbit import LowbitError
from lowbit.deploy import export, export_float
from lowbit.mixed import Budget
from lowbit.mixed.drop_search import top1_classes
from lowbit.run import float_file_size
from report import bundled_model, fashion_mnist_splits, md_table, publish, topic_page

CALIB, HOLDOUT = 1024, 512


def onnx_classes(path_or_proto, images: torch.Tensor) -> torch.Tensor:
    """Top-1 classes of an ONNX classifier (a path or a ModelProto) in onnxruntime, on one thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = path_or_proto.SerializeToString() if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x.numpy()})[0].argmax(1) for x in images.split(500)]
    return torch.from_numpy(np.concatenate(out))


def scored(path: Path, test_x: torch.Tensor, labels: torch.Tensor, float_test: torch.Tensor, float_bytes: int) -> list:
    classes = onnx_classes(path, test_x)
    return [100 * (classes == labels).float().mean().item(), 100 * (classes != float_test).float().mean().item(),
            f"{path.stat().st_size / 1024:.0f} KB ({path.stat().st_size / float_bytes:.3f}x)"]


def nncf_rows(float_path: Path, calib: torch.Tensor, holdout: torch.Tensor, reference: torch.Tensor,
              targets: list[float], tmp: Path, score) -> list[list]:
    """NNCF's plain W8A8 quantization and its quantization with accuracy control at each target."""
    import nncf

    model = onnx.load(str(float_path))
    name = model.graph.input[0].name
    calibration = nncf.Dataset(list(calib.split(1)), lambda x: {name: x.numpy()})
    validation = nncf.Dataset(list(zip(holdout.split(1), reference.split(1))), lambda item: {name: item[0].numpy()})

    def agreement(candidate, items):
        images = torch.cat([x for x, _ in items])
        same = (onnx_classes(candidate, images) == torch.cat([y for _, y in items])).float()
        return same.mean().item(), same.tolist()

    rows = []
    start = time.perf_counter()
    plain = nncf.quantize(model, calibration, subset_size=len(calib))
    seconds = time.perf_counter() - start
    onnx.save(plain, str(tmp / "nncf_w8a8.onnx"))
    changed = 100 * (1 - agreement(plain, validation.get_data())[0])
    rows.append([f"NNCF {nncf.__version__} quantize W8A8", "-", changed, *score(tmp / "nncf_w8a8.onnx"), "-", seconds])
    for t in targets:
        start = time.perf_counter()
        found = nncf.quantize_with_accuracy_control(model, calibration, validation, agreement, max_drop=t / 100,
                                                    subset_size=len(calib))
        seconds = time.perf_counter() - start
        path = tmp / f"nncf_drop{t:g}.onnx"
        onnx.save(found, str(path))
        changed = 100 * (1 - agreement(found, validation.get_data())[0])
        rows.append(["NNCF quantize_with_accuracy_control W8A8", t, changed, *score(path), "-", seconds])
        print(rows[-1], flush=True)
    return rows


def model_table(name: str, targets: list[float], with_nncf: bool, tmp: Path) -> str:
    train, test = fashion_mnist_splits()
    model = bundled_model(name)
    pool = torch.cat(calibration_batches(train, CALIB + HOLDOUT, 64, seed=0))
    calib, holdout = pool[:CALIB], pool[CALIB:]
    test_x = torch.stack([x for x, _ in test])
    labels = torch.tensor([int(y) for _, y in test])
    float_path = export_float(model, tmp / f"{name}_float.onnx", calib[:2])
    float_bytes = float_path.stat().st_size
    float_test = onnx_classes(float_path, test_x)
    reference = onnx_classes(float_path, holdout)

    def score(path: Path) -> list:
        return scored(path, test_x, labels, float_test, float_bytes)

    float_lowbit = float_file_size(model)
    rows = [["float32", "-", 0.0, *score(float_path), "-", "-"]]

    def lowbit_row(label: str, target: float | None, bits: tuple[int, ...] | None) -> bool:
        """Quantize, export and score one lowbit setting into ``rows``; False when the target is refused."""
        kwargs = dict(weights_bits=8, mixed=Budget(max_drop=target, bits=bits)) if bits else dict(weights_bits=target)
        start = time.perf_counter()
        try:
            q = lowbit.quantize(model, pool, activation_bits=8, calib_images=CALIB, **kwargs)
        except LowbitError:  # even the widest weights with float activations miss it: the share they change
            widest = lowbit.quantize(model, calib, weights_bits=max(bits), activation_bits=None)
            changed = 100 * (top1_classes(widest, holdout) != reference).float().mean().item()
            rows.append([label, target, f"none within it ({max(bits)}-bit weights with float activations: "
                         f"{changed:.2f})", "-", "-", "-", "-", time.perf_counter() - start])
            return False
        seconds = time.perf_counter() - start
        stem = tmp / f"{name}_lowbit_{len(rows)}"
        path = export(q, stem.with_suffix(".onnx"), calib[:2]).path
        packed = lowbit.save(q, stem.with_suffix(".lowbit")).stat().st_size
        changed = 100 * (onnx_classes(path, holdout) != reference).float().mean().item()
        rows.append([label, "-" if bits is None else target, changed, *score(path),
                     f"{packed / 1024:.0f} KB ({packed / float_lowbit:.3f}x)", seconds])
        print(rows[-1], flush=True)
        return True

    for w in (8, 4):
        lowbit_row(f"lowbit W{w}A8 (uniform)", w, None)
    refused = [t for t in targets if not lowbit_row("lowbit max_drop W2/4/8 A8", t, (2, 4, 8))]
    for t in refused:  # the way out the refusal names: 16-bit weights among the options
        lowbit_row("lowbit max_drop W2/4/8/16 A8", t, (2, 4, 8, 16))
    if with_nncf:
        rows += nncf_rows(float_path, calib, holdout, reference, targets, tmp, score)
    return md_table(["tool and setting", "target: held-out classes changed at most %", "held-out classes changed %",
                     "test top-1 %", "test classes changed %", "ONNX file (x float ONNX)",
                     ".lowbit file (x float32 safetensors)", "quantize s"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenet_v2_small"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.0, 0.2, 0.5, 1.0, 2.0])
    parser.add_argument("--nncf", action="store_true", help="add NNCF's rows (NNCF installed)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            body = model_table(name, args.targets, args.nncf, Path(tmp))
            body += ("\n\nBoth tools check their target on the same 512 training images, set aside from the same 1024 "
                     "calibration images, against the float model's classes; the test columns are measured "
                     "afterwards, in onnxruntime on the full test split. lowbit's search mixes 2-, 4- and 8-bit "
                     "weights (activations at 8 bits, the fewest left float when 8-bit weights miss the target) and "
                     "keeps the smallest candidate within the target; NNCF "
                     "quantizes at 8 bits and returns layers to float until the target holds. ONNX has no 2-bit "
                     "type, so lowbit's 2-bit layers take 4 bits a weight in ONNX files; the .lowbit file packs "
                     "them.")
            publish(f"accuracy-target-{name}", f"Accuracy targets: {name} on Fashion-MNIST", body,
                    topic_page("mixed"), write=not args.no_write)


if __name__ == "__main__":
    main()
