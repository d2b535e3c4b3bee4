"""Reconstruction blocks: cut where one tensor is alive, never where a tuple is about to be taken apart."""

import operator

import torch
from torch import nn

import lowbit
from lowbit.algorithms.blocks import find_blocks


class Shuffle(nn.Module):
    """A ShuffleNet unit: the channels split in two halves (``chunk``), one half convolved, halves shuffled."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        kept, changed = y.chunk(2, dim=1)
        y = torch.cat((kept, self.branch(changed)), 1)
        batch, channels, height, width = y.size()
        y = y.view(batch, 2, channels // 2, height, width).transpose(1, 2).reshape(batch, channels, height, width)
        return self.head(y.mean((2, 3)))


def test_no_block_ends_at_a_tuple_and_learned_rounding_runs():
    torch.manual_seed(0)
    model, x = Shuffle().eval(), torch.rand(32, 3, 8, 8)
    qmodel = lowbit.quantize(model, x, weights_bits=4, activation_bits=8)
    nodes = {n.name: n for n in qmodel.graph.nodes}
    blocks = find_blocks(qmodel)
    for block in blocks:
        assert not any(u.target is operator.getitem for u in nodes[block.output].users), block.output
    assert sorted(n for b in blocks for n in b.layers) == ["branch.0", "branch.2", "head", "stem"]
    learned = lowbit.quantize(model, x, weights_bits=4, activation_bits=8, method="brecq", iters=20)
    with torch.no_grad():
        assert torch.isfinite(learned(x)).all()
