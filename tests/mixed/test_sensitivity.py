import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp

from conftest import ResidualNet, randomize_bn
from lowbit.config import QuantConfig
from lowbit.mixed.allocate import calibrated_copies
from lowbit.mixed.hessian_sensitivity import hessian_scores
from lowbit.mixed.orthogonality import centred_gram, layer_importance, orthogonality_matrix
from lowbit.mixed.sensitivity import METRICS, ScoringTask, float_mode

FRAGILE = "2"


def fragile_mlp(seed: int = 0) -> nn.Module:
    """An MLP whose layer '2' has one input column scaled up 40x (and the unit feeding it scaled down, so the
    function is unchanged): its per-channel grids are set by that column and crush every other weight."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 4))
    with torch.no_grad():
        net[0].weight[5] /= 40
        net[0].bias[5] /= 40
        net[2].weight[:, 5] *= 40
    return net.eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(128, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("metric", ["measured", "hessian"])
def test_fragile_layer_ranks_first(metric, images):
    scores = _scores(metric, images)
    for bits in (2, 4):
        ranked = sorted(scores.weights, key=lambda n: scores.weights[n][bits], reverse=True)
        assert ranked[0] == FRAGILE, (bits, {n: s[bits] for n, s in scores.weights.items()})


def _scores(metric, images):
    copies = calibrated_copies(fragile_mlp(), images, QuantConfig.from_bits(8, 8), (2, 4, 8), True, 64)
    acts = [n for n, _ in copies[8].named_modules() if n.startswith("act_quant.")]
    return METRICS[metric](ScoringTask(copies, images, ["0", "2", "4", "6"], (2, 4, 8), acts, (2, 4, 8)))


@pytest.mark.parametrize("metric", ["measured", "hessian"])
def test_scores_are_finite_and_fall_with_bits(metric, images):
    """Measured and predicted damage shrinks with width (orthogonality scores fall with bits by their formula:
    see the tests of its importance below)."""
    scores = _scores(metric, images)
    for table in (scores.weights, scores.activations):
        assert table
        for name, by_bits in table.items():
            assert all(math.isfinite(v) and v >= 0 for v in by_bits.values()), (name, by_bits)
            assert by_bits[2] >= by_bits[4] >= by_bits[8], (name, by_bits)
            assert by_bits[2] > by_bits[8], (name, by_bits)


class TwoPaths(nn.Module):
    """Layers ``a``, ``c`` and ``d`` process the first half of the input, one after the other; ``b`` only the
    second half, so its features are unrelated to everyone else's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c, self.d = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.c(torch.relu(self.a(x[:, :8])))
        return self.d(torch.relu(z)) + self.b(x[:, 8:]).sum(1, keepdim=True)


def test_orthogonality_ranks_the_layer_with_unrelated_features_first(images):
    """Listed in the order a, b, c, d: b's features are orthogonal to the others, so it is the most important
    layer; c and d come after it and share a's information, so they matter least."""
    copies = calibrated_copies(TwoPaths().eval(), images, QuantConfig.from_bits(8, 8), (2, 4, 8), True, 64)
    scores = METRICS["orthogonality"](ScoringTask(copies, images, ["a", "b", "c", "d"], (2, 4, 8), [], (2, 4, 8))).weights
    for bits in (2, 4):
        ranked = sorted(scores, key=lambda n: scores[n][bits], reverse=True)
        assert ranked[0] == "b", {n: s[bits] for n, s in scores.items()}
        assert max(scores["c"][bits], scores["d"][bits]) < 0.1 * scores["b"][bits]


def _exact_quadratic_form(model: nn.Module, images: torch.Tensor, name: str, error: torch.Tensor) -> float:
    """``1/2 d^T H d`` per image from the exact logit change ``J d`` (a Jacobian-vector product)."""
    params = dict(model.named_parameters())
    weight = params[name + ".weight"].detach()
    with torch.no_grad():
        logits, change = jvp(lambda w: functional_call(model, {**params, name + ".weight": w}, (images,)),
                             (weight,), (error,))
    p = logits.softmax(-1)
    return 0.5 * float(((change * change * p).sum(-1) - (change * p).sum(-1).pow(2)).mean())


def test_hessian_scores_match_the_exact_quadratic_form(images):
    """Cross terms count: a diagonal Hessian misses the 2-bit score of the last layer almost threefold here."""
    names = ["0", "2", "4", "6"]
    copies = calibrated_copies(fragile_mlp(), images, QuantConfig.from_bits(8, 8), (2, 4, 8), True, 64)
    scores = hessian_scores(ScoringTask(copies, images, names, (2, 4)), n_probes=256)
    with float_mode(copies[8]) as model:
        for name in names:
            weight = model.get_submodule(name).weight.detach()
            for bits in (2, 4):
                error = copies[bits].get_submodule(name).weight_quant.fake_quantize(weight) - weight
                exact = _exact_quadratic_form(model, images, name, error)
                assert scores.weights[name][bits] == pytest.approx(exact, rel=0.15), (name, bits)


def test_orthogonal_layer_is_most_important():
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(64, 8, generator=g)
    feats = [shared + 0.1 * torch.randn(64, 8, generator=g) for _ in range(3)]
    feats.insert(1, torch.randn(64, 8, generator=g))  # unrelated to the others
    orm = orthogonality_matrix([centred_gram(f) for f in feats])
    assert torch.allclose(orm.diagonal(), torch.ones(4, dtype=orm.dtype))
    assert orm[0, 2] > 0.9 and orm[0, 1] < 0.5
    gamma = orm.sum(1) - 1
    assert int(gamma.argmin()) == 1
    # exp(-10 gamma) is ~1 for the unrelated layer and negligible for the others; averaged over each layer and
    # those after it, layer 1 keeps ~1/3, layer 0 ~1/4 (relative: ~3/4) and layers 2 and 3 almost nothing
    theta = layer_importance(orm)
    assert int(theta.argmax()) == 1
    assert theta[0].item() == pytest.approx(0.75, abs=0.05)
    assert theta[2] < 0.01 and theta[3] < 0.01


def test_layer_importance_of_a_known_orthogonality_matrix():
    """gamma = (0.7, 0.6, 0.3); with beta = 1, theta ~ exp(-gamma) averaged over each layer and the later ones,
    relative to the largest average (the last layer's, exp(-0.3))."""
    orm = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.1], [0.2, 0.1, 1.0]], dtype=torch.float64)
    expected = [(math.exp(-0.4) + math.exp(-0.3) + 1) / 3, (math.exp(-0.3) + 1) / 2, 1.0]
    assert layer_importance(orm, beta=1.0).tolist() == pytest.approx(expected, rel=1e-9)
    # beta sharpens: at beta = 2 the first two layers count for less
    sharper = [(math.exp(-0.8) + math.exp(-0.6) + 1) / 3, (math.exp(-0.6) + 1) / 2, 1.0]
    assert layer_importance(orm, beta=2.0).tolist() == pytest.approx(sharper, rel=1e-9)


class ScaledResidual(nn.Module):
    """Linear layers around a residual sum that is scaled either in place or out of place."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.in_place = in_place
        self.a, self.b, self.c = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        z = self.b(y) + y
        return self.c(z.mul_(3) if self.in_place else z * 3)


@pytest.mark.parametrize("metric", ["measured", "hessian", "orthogonality"])
def test_in_place_operations_do_not_change_scores(metric, images):
    def scores(in_place: bool):
        copies = calibrated_copies(ScaledResidual(in_place).eval(), images, QuantConfig.from_bits(8, 8), (2, 4, 8),
                                   True, 64)
        acts = sorted(n for n, _ in copies[8].named_modules() if n.startswith("act_quant."))
        s = METRICS[metric](ScoringTask(copies, images, ["a", "b", "c"], (2, 4, 8), acts, (2, 4, 8)))
        tables = [s.weights[n] for n in ("a", "b", "c")] + [s.activations[n] for n in acts]  # same order in both
        return [score for table in tables for score in table.values()]

    assert scores(True) == pytest.approx(scores(False), rel=1e-4)


def test_a_registered_metric_drives_the_allocation(monkeypatch):
    """Adding a metric is one decorated function: the allocation then follows its scores."""
    from lowbit.mixed import Budget, allocate, metric
    from lowbit.mixed.sensitivity import Scores

    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))  # the new entry goes when the test ends
    favourite = "b1.0"

    @metric("favourite_layer")
    def favourite_layer(task: ScoringTask) -> Scores:
        # only one layer suffers from fewer bits: every other layer takes the fewest bits the budget allows
        return Scores({n: {b: (1.0 if n == favourite else 0.0) * (8 - b) for b in task.weight_bits}
                       for n in task.layers}, {})

    torch.manual_seed(0)
    model = randomize_bn(ResidualNet())
    allocation = allocate(model, torch.randn(32, 3, 16, 16), QuantConfig.from_bits(8, None),
                          Budget(weights_cr=8, bits=(2, 4, 8)), "favourite_layer")
    chosen = {c.name: c.weight_bits for c in allocation.layers}
    assert allocation.sensitivity == "favourite_layer" and chosen[favourite] == 8
