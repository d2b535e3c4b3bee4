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
