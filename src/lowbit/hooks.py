"""Watching what named modules compute during a forward pass, the one way lowbit does it."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

# (module name, its output) -> a tensor that replaces the output downstream, or None to leave it
OutputWatcher = Callable[[str, torch.Tensor], torch.Tensor | None]


@contextlib.contextmanager
def watching_outputs(modules: Iterable[tuple[str, nn.Module]], watch: OutputWatcher) -> Iterator[None]:
    """Call ``watch(name, output)`` each time one of ``modules`` runs while the context is open.

    A watcher that keeps an output should keep a copy (or return one to go on downstream): an in-place
    operation further on (``ReLU(inplace=True)``) would otherwise rewrite what it kept. The hooks are removed
    on leaving, also when the forward pass raised.
    """
    with removed_on_exit([m.register_forward_hook(lambda mod, args, out, n=name: watch(n, out))
                          for name, m in modules]):
        yield


@contextlib.contextmanager
def watching_inputs(modules: Iterable[tuple[str, nn.Module]], watch: Callable[[str, torch.Tensor], None]
                    ) -> Iterator[None]:
    """Call ``watch(name, first input)`` each time one of ``modules`` is about to run while the context is open."""
    with removed_on_exit([m.register_forward_pre_hook(lambda mod, args, n=name: watch(n, args[0]))
                          for name, m in modules]):
        yield


@contextlib.contextmanager
def removed_on_exit(handles: Iterable[RemovableHandle]) -> Iterator[None]:
    """Keep hooks in place while the context is open; remove them on leaving, also when it raised."""
    handles = list(handles)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
