import pytest

from lowbit import LowbitError
from lowbit.algorithms import make_options


@pytest.mark.parametrize("method,options", [
    ("brecq", {"lr": -1}), ("brecq", {"lr": float("nan")}), ("brecq", {"lr": "nan"}), ("brecq", {"lr": 0}),
    ("qdrop", {"drop_prob": 1.5}), ("adaround", {"warmup": 2}), ("adaround", {"reg_weight": float("inf")}),
    ("eptq", {"hessian_probes": 0}), ("brecq", {"iters": 0}), ("brecq", {"learning_rate": 0.1}),
])
def test_options_that_cannot_work_are_refused_in_one_line(method, options):
    with pytest.raises(LowbitError) as info:
        make_options(method, options)
    assert "\n" not in str(info.value)


def test_valid_options_are_kept():
    options = make_options("qdrop", {"lr": 0.003, "drop_prob": 0.25, "iters": 7})
    assert (options.lr, options.drop_prob, options.iters) == (0.003, 0.25, 7)


@pytest.mark.parametrize("method,option", [("adaround", "act_lr"), ("adaround", "drop_prob"), ("brecq", "drop_prob"),
                                           ("brecq", "hessian_probes"), ("qdrop", "hessian_probes"),
                                           ("adaround", "granularity")])
def test_each_method_takes_only_its_own_options(method, option):
    """A knob of another method is refused by name, with the method's own options listed."""
    with pytest.raises(LowbitError, match=f"method '{method}' has no option {option}; its options: .*iters"):
        make_options(method, {option: 1})


def test_cli_method_choices_and_help_come_from_the_registry(monkeypatch):
    from lowbit.algorithms.registry import ALGORITHMS, Algorithm
    from lowbit.algorithms.nearest import NearestOptions
    from lowbit.cli import build_parser

    monkeypatch.setitem(ALGORITHMS._entries, "noop", Algorithm(NearestOptions, lambda *a: None, "does nothing"))
    quantize = build_parser()._subparsers._group_actions[0].choices["quantize"]
    method = next(a for a in quantize._actions if a.dest == "method")
    assert "noop" in method.choices and "noop: does nothing" in method.help
