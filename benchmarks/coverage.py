"""Architecture coverage: which models lowbit quantizes whole, exports, and runs on onnxruntime's integer kernels.

For torchvision and timm architectures (random weights: only coverage is measured, not accuracy), W8A8
round-to-nearest on the same random calibration images: the share of parameters lowbit keeps float (beyond
biases and norms), whether the ONNX export succeeds, how many convolutions and matmuls onnxruntime's optimized
graph runs on integer kernels and how many in float, and the largest difference between onnxruntime's outputs
and lowbit's (relative to lowbit's largest output; random deep networks amplify the rare rounding differences of
float arithmetic done in another order). Beside it, onnxruntime's own ``quantize_static`` (QDQ, per-channel,
MinMax, after its pre-processing) on lowbit's float ONNX export of the same model with the same images: integer
and float kernels.
Run: python3 benchmarks/coverage.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision
from onnxruntime.quantization import CalibrationMethod

import lowbit
from deploy import ort_static
from lowbit.coverage import coverage
from lowbit.deploy import export, export_float
from lowbit.deploy.runtime import FLOAT_COMPUTE_OPS, INTEGER_OPS, OnnxClassifier, optimized_op_counts
from lowbit.errors import LowbitError
from report import md_table, publish, topic_page

PAGE = topic_page("coverage")
# convolutions and matmuls only (onnxruntime's quantize_static also quantizes elementwise operators)
INTEGER_LAYERS = INTEGER_OPS & {"QLinearConv", "NhwcQLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                                "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
FLOAT_LAYERS = FLOAT_COMPUTE_OPS | {"ConvTranspose"}
# name -> (builder, input size)
MODELS = {
    "torchvision resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 64),
    "torchvision mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), 64),
    "torchvision efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), 64),
    "torchvision shufflenet_v2_x0_5": (lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10), 64),
    "torchvision googlenet": (lambda: torchvision.models.googlenet(num_classes=10, aux_logits=False,
                                                                    init_weights=True), 64),
    "torchvision convnext_tiny": (lambda: torchvision.models.convnext_tiny(num_classes=10), 64),
    "torchvision vit (nn.MultiheadAttention, 4 layers)": (
        lambda: torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=4, num_heads=4,
                                                     hidden_dim=128, mlp_dim=256, num_classes=10), 64),
    "torchvision swin_t": (lambda: torchvision.models.swin_t(num_classes=10), 64),
    "torchvision swin_v2_t": (lambda: torchvision.models.swin_v2_t(num_classes=10), 64),
    "timm tf_efficientnet_b0 (Conv2dSame)": (lambda: timm.create_model("tf_efficientnet_b0", num_classes=10), 64),
    "timm resnetv2_50x1_bit (StdConv2d)": (lambda: timm.create_model("resnetv2_50x1_bit", num_classes=10), 64),
    "timm nfnet_l0 (ScaledStdConv2d)": (lambda: timm.create_model("nfnet_l0", num_classes=10), 64),
    "timm mobilevit_xxs (untraceable blocks)": (lambda: timm.create_model("mobilevit_xxs", num_classes=10), 64),
    "timm deit_tiny_patch16_224": (lambda: timm.create_model("deit_tiny_patch16_224", num_classes=10,
                                                             img_size=64), 64),
    "timm mixer_s16_224": (lambda: timm.create_model("mixer_s16_224", num_classes=10, img_size=64), 64),
    "timm edgenext_xx_small": (lambda: timm.create_model("edgenext_xx_small", num_classes=10), 64),
    "timm levit_128s": (lambda: timm.create_model("levit_128s", num_classes=10), 224),
    "timm twins_svt_small": (lambda: timm.create_model("twins_svt_small", num_classes=10), 64),
}


def kernels(path: Path) -> str:
    counts = optimized_op_counts(path)
    integer = sum(v for k, v in counts.items() if k in INTEGER_LAYERS)
    return f"{integer} / {sum(counts[k] for k in FLOAT_LAYERS)}"


def row(name: str, build, size: int, images: int, tmp: Path) -> list:
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():  # off the initialization's symmetries (identical layers, zero heads)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.rand(images, 3, size, size)
    params = sum(p.numel() for p in model.parameters())
    qmodel = lowbit.quantize(model, x, weights_bits=8, activation_bits=8, calib_images=images, batch_size=images)
    share = coverage(qmodel)
    unquantized = sum(share.unquantized.values()) / params
    try:
        path = export(qmodel, tmp / "lowbit.onnx", x[:2]).path
        with torch.no_grad():
            ours = qmodel(x[:4])
        difference = (OnnxClassifier(path)(x[:4]) - ours).abs().max() / ours.abs().max().clamp_min(1e-12)
        exported, integer, diff = "yes", kernels(path), f"{float(difference):.3f}"
    except LowbitError as exc:
        exported, integer, diff = "no: " + str(exc).split(": ", 1)[-1].split(";")[0], "-", "-"
    try:
        float_path = export_float(model, tmp / "float.onnx", x[:2])
    except LowbitError:
        return [name, f"{params / 1e6:.1f}M", f"{100 * unquantized:.1f}%", exported, integer, diff,
                "no float ONNX file to quantize (the same exporter error)"]
    try:
        batches = [x[i : i + 1] for i in range(images)]
        peer = kernels(ort_static(float_path, tmp / "ort.onnx", batches, CalibrationMethod.MinMax))
    except Exception as exc:  # noqa: BLE001 - the peer's failure is a result, reported in the table
        peer = f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    return [name, f"{params / 1e6:.1f}M", f"{100 * unquantized:.1f}%", exported, integer, diff, peer]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=16, help="calibration images (random)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, (build, size) in MODELS.items():
            rows.append(row(name, build, size, args.images, Path(d)))
            print(rows[-1], flush=True)
    headers = ["model (random weights)", "parameters", "lowbit: weights left float (beyond biases and norms)",
               "lowbit: ONNX export", "lowbit in onnxruntime: integer / float convs and matmuls",
               "largest difference onnxruntime vs lowbit (of its largest output)",
               "onnxruntime quantize_static: integer / float convs and matmuls"]
    body = md_table(headers, rows) + (
        f"\n\nW8A8 round-to-nearest, {args.images} random calibration images at each model's input size (64x64, "
        "LeViT 224x224); integer kernels are onnxruntime's QLinearConv, QGemm, QLinearMatMul and "
        "MatMulIntegerToFloat, float ones its Conv/Gemm/MatMul forms (elementwise operators are not counted). What stays float in lowbit's "
        "files: a ViT's patch embedding (its bias written for OpenVINO). Inside blocks torch.fx cannot trace "
        "(MobileViT's), the parts that trace are quantized as graphs and the other layers quantize their inputs. timm's fused attention calls are written "
        "out so that their probabilities are quantized too, and torchvision's Swin attention is rebuilt with "
        "its projections as layers (it hands their weights to one function); and the fused calls that a "
        "forward torch.fx cannot trace makes (Twins' windowed attention, on 5-d tensors) are routed to the same "
        "steps with their own quantizers while that forward runs.")
    publish("coverage", "Architecture coverage: torchvision and timm models, W8A8", body, PAGE, not args.no_write)


if __name__ == "__main__":
    np.random.seed(0)
    main()
