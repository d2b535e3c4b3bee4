"""Shared benchmark plumbing: the bundled models, machine description, markdown tables, and the sections of the
per-topic pages in docs/benchmarks/ (docs/BENCHMARKS.md is the summary that links them)."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import re
import sys
from pathlib import Path

import torch
from torch import nn

from lowbit.data import load_dataset
from lowbit.io.atomic import atomic_path
from lowbit.models import build_model, bundled_checkpoint, load_checkpoint

PAGES = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def topic_page(topic: str) -> Path:
    """The docs page of one benchmark topic (``bitwidths``, ``rounding``, ``mixed``, ``datafree``, ``deploy``...)."""
    return PAGES / f"{topic}.md"


def bundled_model(name: str, checkpoint: str | Path | None = None) -> nn.Module:
    """A zoo model with its bundled Fashion-MNIST weights (or those of ``checkpoint``), in eval mode."""
    weights = bundled_checkpoint(name) if checkpoint is None else checkpoint
    return load_checkpoint(build_model(name, num_classes=10, in_channels=1), weights).eval()


def fashion_mnist_splits():
    """The Fashion-MNIST training and test splits, with library warnings only on the log."""
    logging.basicConfig(level=logging.WARNING)
    return load_dataset("fashion-mnist", "train")[0], load_dataset("fashion-mnist", "test")[0]


def float_weight_bytes(model: nn.Module) -> int:
    """float32 bytes of the conv and linear weights: the baseline of weights-compression ratios."""
    return sum(4 * m.weight.numel() for m in model.modules() if type(m) in (nn.Conv2d, nn.Linear))


def machine() -> str:
    """CPU model and core count (or the GPU name), plus torch version and the threads torch computes with."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        cpu = platform.processor() or "unknown CPU"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        device = f"{cpu}, {os.cpu_count()} cores, CPU only"
    return f"{device}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.2f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(key: str, title: str, body: str, page: Path) -> None:
    """Replace (or append) the section ``key`` of ``page``, stamped with command, machine and date."""
    command = "python3 " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    stamp = (f"Command: `{command}`  \nMachine: {machine()}  \n"
             f"Date: {datetime.date.today().isoformat()}\n")
    section = f"<!-- {key} -->\n## {title}\n\n{stamp}\n{body.strip()}\n<!-- /{key} -->\n"
    text = page.read_text() if page.exists() else "# lowbit benchmarks\n\n"
    pattern = re.compile(rf"<!-- {re.escape(key)} -->.*?<!-- /{re.escape(key)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    with atomic_path(page) as tmp:
        tmp.write_text(text)


def publish(key: str, title: str, body: str, page: Path, write: bool = True) -> None:
    """Print a benchmark's results and, unless ``write`` is off, put them in ``page``."""
    print(body)
    if write:
        write_section(key, title, body, page)
