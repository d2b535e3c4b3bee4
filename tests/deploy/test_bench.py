"""Timing of the four forms: which runs a turn-based median counts, and every form timed on each provider."""

from __future__ import annotations

import pytest

import lowbit
import lowbit.deploy.bench as bench
from lowbit.deploy.runtime import present_providers


class SwitchCostClock:
    """A fake clock on which a function's first run after another function's costs ``switch`` seconds and every
    further run in a row ``step``: how a runtime behaves while the previous runtime's threads still spin."""

    def __init__(self, switch: float, step: float) -> None:
        self.now, self.last, self.switch, self.step, self.calls = 0.0, None, switch, step, []

    def __call__(self) -> float:
        return self.now

    def runner(self, name: str):
        def run() -> None:
            self.now += self.switch if self.last != name else self.step
            self.last = name
            self.calls.append(name)
        return run


def test_timed_runs_follow_untimed_ones_at_every_switch(monkeypatch):
    clock = SwitchCostClock(switch=100.0, step=1.0)
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    medians = bench.median_seconds({"a": clock.runner("a"), "b": clock.runner("b")}, warmup=1, repeats=7, block=5)
    assert medians == {"a": 1.0, "b": 1.0}  # the switch cost lands on untimed runs only
    assert clock.calls == ["a"] * 6 + ["b"] * 6 + ["a"] * 3 + ["b"] * 3  # turns of one warm-up and 5, then 2 timed


def test_short_runs_warm_up_for_a_settling_time(monkeypatch):
    step = bench.SETTLE_S / 20
    clock = SwitchCostClock(switch=step, step=step)
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    medians = bench.median_seconds({"a": clock.runner("a")}, warmup=1, repeats=5, block=5)
    assert medians["a"] == pytest.approx(step)
    assert 20 <= len(clock.calls) - 5 <= 21  # untimed runs for SETTLE_S, not just the one warm-up run asked for


@pytest.mark.parametrize("provider", present_providers())
def test_every_form_is_timed_with_each_present_provider(residual_net, images, provider):
    """The CPU here; onnxruntime's CUDA and TensorRT providers too where onnxruntime-gpu is installed."""
    qmodel = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=8)
    timings = bench.bench_model(qmodel, tuple(images.shape[1:]), [1, 2], threads=1, warmup=0, repeats=1,
                                provider=provider)
    assert sorted((t.form, t.batch_size) for t in timings) == sorted((f, b) for f in bench.FORMS for b in (1, 2))
    assert {t.provider for t in timings} == {provider}
