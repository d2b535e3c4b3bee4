"""Task types: what a quantization run does differently for each kind of model lowbit handles.

A classifier is traced with torch.fx (falling back to module swapping), needs nothing after freezing, and is
rebuilt from the zoo. An image codec keeps its own class (layers swapped in place), rebuilds its entropy tables
after quantization, checks the tables it loads, and is rebuilt from the codec registry. ``lowbit.quantize``
and ``lowbit.load`` ask :func:`task_of` which task a model belongs to; a saved file names its task in its
architecture record. Adding a task is one entry in :data:`TASKS` and the module that implements it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from lowbit.codec import task as codec_task
from lowbit.config import QuantConfig
from lowbit.errors import LowbitError
from lowbit.graph import Mode
from lowbit.models import rebuild as rebuild_classifier
from lowbit.registry import Registry

DEFAULT = "classification"


def _nothing(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class Task:
    """One kind of model: how to recognise it, prepare it, finish it, check it after loading, rebuild it."""

    name: str
    description: str
    claims: Callable[[nn.Module], bool]
    capture: Mode | None  # None: trace with torch.fx, swap modules where that fails; "swap": keep the class
    setup: Callable[[], None]  # registers the task's own quantized layer types
    configure: Callable[[nn.Module, QuantConfig], QuantConfig]  # what the task needs of the config
    finish: Callable[[nn.Module], None]  # after freezing
    check_loaded: Callable[[nn.Module], None]  # after loading, before first use
    rebuild: Callable[[dict], nn.Module]  # the float architecture from a file's architecture record
    default_sensitivity: str  # the mixed-precision metric used when none is named
    sensitivities: tuple[str, ...] | None = None  # the only metrics that fit its outputs (None: any registered)
    equalizes: bool = False  # equalize activation ranges when the config leaves it to the task
    unequalized: Callable[[nn.Module], tuple[str, ...]] = lambda _: ()  # modules whose ranges stay as they are
    correct_nearest: Callable[[nn.Module, list], None] = _nothing  # round-to-nearest, after calibration
    before_calibration: Callable[[nn.Module], None] = _nothing  # the prepared model, before any grid is chosen

    def sensitivity(self, name: str | None) -> str:
        """``name``, or the task's default metric; a one-line error for a metric that cannot score this task."""
        if name is None:
            return self.default_sensitivity
        if self.sensitivities is not None and name not in self.sensitivities:
            raise LowbitError(f"the {name} sensitivity cannot score {self.description.split(' (')[0]}; use "
                              f"{' or '.join(self.sensitivities)}")
        return name


TASKS: Registry[Task] = Registry("task")
TASKS.add(DEFAULT, Task(DEFAULT, "image classifiers (top-1, precision, recall, F1)", lambda _: True, None,
                        _nothing, lambda _, config: config, _nothing, _nothing, rebuild_classifier, "hessian"))
TASKS.add(codec_task.TASK, Task(codec_task.TASK, "learned image codecs with CompressAI's interface (bpp, PSNR, "
                                "MS-SSIM from real bitstreams)", codec_task.is_codec, "swap", codec_task.setup,
                                codec_task.configure, codec_task.finish, codec_task.check_loaded, codec_task.rebuild,
                                codec_task.SENSITIVITY, (codec_task.SENSITIVITY,), equalizes=True,
                                unequalized=codec_task.unequalized,
                                correct_nearest=codec_task.correct_nearest,
                                before_calibration=codec_task.before_calibration))


def task_of(model: nn.Module) -> Task:
    """The task ``model`` belongs to: the first specific task that claims it, else classification."""
    for name in TASKS:
        if name != DEFAULT and TASKS[name].claims(model):
            return TASKS[name]
    return TASKS[DEFAULT]


def rebuild(record: dict) -> nn.Module:
    """The float architecture a file's architecture record describes (the record names its task)."""
    return TASKS.get(record.get("task", DEFAULT)).rebuild(record)


def rebuild_setup(record: dict | None) -> None:
    """Register the layer types of the task a file's architecture record names (nothing for a custom model)."""
    if record:
        TASKS.get(record.get("task", DEFAULT)).setup()
