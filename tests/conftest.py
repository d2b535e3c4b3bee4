"""Tiny models and data shared by the tests."""

from __future__ import annotations

import copy
import gzip
import json
import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lowbit.io.lowbit_file import DIGEST_KEY, META_KEY
from lowbit.io.payload import file_digest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # each worker has a core of its own: more threads would make the workers compete for both
    torch.set_num_threads(1)


class ConvBNReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.bn(self.conv(x)))), 1))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResidualNet(nn.Module):
    """Stem, two residual blocks (one with a 1x1 projection), a concatenation, and a linear head."""

    def __init__(self, in_channels: int = 3, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.b2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.proj = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.side = nn.Conv2d(8, 4, 1, stride=2)
        self.relu = nn.ReLU()
        self.head = nn.Linear(20, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(self.b1(x) + x)
        y = self.relu(self.b2(x) + self.proj(x))
        y = torch.cat([y, self.side(x)], dim=1)
        return self.head(y.mean(dim=(2, 3)))

# OpenVINO's int8 kernels on x86 CPUs without VNNI add pairs of uint8 x int8 products in saturating 16-bit sums
# (oneDNN's documented behaviour, which no file can change and no OpenVINO setting turns off); tests that compare
# OpenVINO's outputs with lowbit's use 7-bit weight grids there, which cannot saturate, so that they check the
# file's arithmetic rather than the CPU's.
def openvino_exact_weight_bits() -> int:
    from lowbit.deploy.runtime import x86_without_vnni

    return 7 if x86_without_vnni() else 8


def onnx_difference(qmodel: nn.Module, path: Path, images: torch.Tensor) -> float:
    """The largest difference between onnxruntime's outputs of the exported file at ``path`` and lowbit's, as a
    share of lowbit's largest output."""
    from lowbit.deploy.runtime import OnnxClassifier

    with torch.no_grad():
        ours = qmodel(images)
    theirs = OnnxClassifier(path)(images)
    return ((ours - theirs).abs().max() / ours.abs().max()).item()


class FusedAttention(nn.Module):
    """A small vision transformer block whose attention is one ``scaled_dot_product_attention`` call."""

    def __init__(self, dim: int = 16, heads: int = 2, **attention: object) -> None:
        super().__init__()
        self.heads = heads
        self.attention = attention
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        b, n, c = tokens.shape
        q, k, v = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        mixed = F.scaled_dot_product_attention(q, k, v, **self.attention).transpose(1, 2).reshape(b, n, c)
        return self.head(self.proj(mixed).mean(1))


class TinyViT(nn.Module):
    """Two pre-norm transformer blocks with explicit attention matmuls."""

    def __init__(self, dim: int = 16, heads: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(1, dim, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            self.blocks.append(nn.ModuleDict({
                "norm1": nn.LayerNorm(dim), "qkv": nn.Linear(dim, 3 * dim), "proj": nn.Linear(dim, dim),
                "norm2": nn.LayerNorm(dim), "fc1": nn.Linear(dim, 2 * dim), "act": nn.GELU(),
                "fc2": nn.Linear(2 * dim, dim)}))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        for blk in self.blocks:
            b, n, c = x.shape
            qkv = blk["qkv"](blk["norm1"](x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(dim=-1)
            x = x + blk["proj"]((attn @ v).transpose(1, 2).reshape(b, n, c))
            x = x + blk["fc2"](blk["act"](blk["fc1"](blk["norm2"](x))))
        return self.head(self.norm(x).mean(1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch-norm layers non-trivial statistics so that folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


@pytest.fixture
def residual_net() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(ResidualNet())


@pytest.fixture
def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return TinyViT().eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


def with_inplace_relus(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ReLUs work in place: each rewrites the output of the layer before it."""
    inplace = copy.deepcopy(model)
    for m in inplace.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    return inplace


def make_image_folder(root, classes=("cat", "dog"), per_class=3, size=(40, 50)) -> None:
    """An ImageNet-style folder of random RGB PNGs: ``root/<class>/<i>.png``, ``size`` = (height, width)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


@pytest.fixture(scope="module")
def w4a4_setup() -> tuple[nn.Module, torch.Tensor]:
    """A residual net with batch-norm statistics and 64 calibration images, for the rounding-method tests."""
    torch.manual_seed(0)
    model = randomize_bn(ResidualNet())
    return model, torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def calibrated_w4a4(setup: tuple[nn.Module, torch.Tensor]) -> nn.Module:
    """A fresh W4A4-calibrated copy of the set-up model, ready for a rounding method."""
    from lowbit.calibrate import calibrate
    from lowbit.config import QuantConfig
    from lowbit.graph import prepare

    model, calib = setup
    q = prepare(model, QuantConfig.from_bits(4, 4))
    calibrate(q, [calib])
    return q


def rounding_outcome(q: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Everything reconstruction decides: integer weights and (learned) activation step sizes."""
    from lowbit.graph import activation_quantizers
    from lowbit.layers import quant_layers

    codes = [layer.integer_weight() for _, layer in quant_layers(q)]
    scales = [aq.scale.detach().clone() for _, aq in activation_quantizers(q)]
    return codes, scales


def same_outcome(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1]))



@contextmanager
def fashion_mnist_subset(root: Path, splits: dict[str, int]) -> Iterator[Path]:
    """The first ``splits[prefix]`` images of each Fashion-MNIST split written to ``root``, with lowbit reading
    them there (``LOWBIT_DATA``) until the block ends. CLI runs evaluate whole splits; short ones keep tests quick."""
    from lowbit.data.fashion_mnist import candidate_dirs, read_idx

    source = next(d for d in candidate_dirs(None) if (d / "t10k-labels-idx1-ubyte.gz").is_file())
    for prefix, n in splits.items():
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            data = read_idx(source / name)[:n]
            header = struct.pack(">HBB", 0, 8, data.ndim) + struct.pack(f">{data.ndim}I", *data.shape)
            (root / name).write_bytes(gzip.compress(header + data.tobytes(), compresslevel=1))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOWBIT_DATA", str(root))
        yield root


def rewrite(src, dst, edit_header=None, edit_tensors=None):
    """Copy a file with its header and/or tensors edited, and a digest that matches the edit (a careful forger)."""
    with safe_open(str(src), "pt") as f:
        header, tensors = json.loads(f.metadata()[META_KEY]), {k: f.get_tensor(k) for k in f.keys()}
    if edit_header:
        header = edit_header(header)
    if edit_tensors:
        edit_tensors(tensors)
    text = json.dumps(header)
    save_file(tensors, str(dst), metadata={META_KEY: text, DIGEST_KEY: file_digest(text, tensors)})
    return dst
