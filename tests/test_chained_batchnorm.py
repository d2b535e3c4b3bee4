"""Batch-norm layers folded into the convolution an untraceable forward provably feeds them from, and only there."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conftest import randomize_bn
from lowbit.chained_batchnorm import chained_batchnorms, fold_chained_batchnorms


class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)


class Nested(Stem):
    def forward(self, x):
        if x.shape[-1] < 4:
            x = F.interpolate(x, scale_factor=2)
        return torch.relu(self.bn2(self.conv2(self.bn(self.conv(x)))))


class Consecutive(Stem):
    def forward(self, x):
        x = self.conv(x)
        x = self.bn(x)
        y = self.conv2(x)
        z = self.bn2(y)  # a new name: the convolution's output stays reachable as y
        return z + y


class Reused(Stem):
    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.bn2(self.conv2(x)) + self.conv2(x)  # conv2's output is also read unnormalized


class ByName(Stem):
    def forward(self, x):
        x = self.bn(self.conv(x))
        return self._modules["bn2"](self.conv2(x))


class Escapes(Stem):
    def forward(self, x):
        return helper(self, self.bn(self.conv(x)))


def helper(module, x):
    return module.bn2(module.conv2(x))


def test_only_chains_the_code_proves_are_folded():
    assert chained_batchnorms(Nested()) == [("conv", "bn"), ("conv2", "bn2")]
    assert chained_batchnorms(Consecutive()) == [("conv", "bn")]
    assert chained_batchnorms(Reused()) == [("conv", "bn")]
    assert chained_batchnorms(ByName()) == []  # children reached by name: nothing can be proved
    assert chained_batchnorms(Escapes()) == []  # self handed to code this reading does not follow


class BranchyResNet(torchvision.models.ResNet):
    def _forward_impl(self, x):
        if x.shape[-1] < 32:
            x = F.interpolate(x, scale_factor=2)
        return super()._forward_impl(x)


class ExplicitSuper(torchvision.models.ResNet):
    def forward(self, x):
        if x.shape[-1] < 32:
            x = F.interpolate(x, scale_factor=2)
        return super(ExplicitSuper, self).forward(x)


@pytest.mark.parametrize("cls", [BranchyResNet, ExplicitSuper])
def test_a_resnet_stem_reached_through_super_is_folded_and_computes_the_same(cls):
    torch.manual_seed(0)
    model = randomize_bn(cls(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=5))
    assert chained_batchnorms(model) == [("conv1", "bn1")]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        assert fold_chained_batchnorms(model) == 1 and isinstance(model.bn1, nn.Identity)
        assert torch.allclose(model(x), before, atol=1e-5)


class ThroughAProperty(Stem):
    @property
    def stem(self):
        return self.conv

    def forward(self, x):
        return self.stem(x) + self.bn(self.conv(x))  # the convolution's output is also read through the property


def test_a_property_stops_the_reading():
    assert chained_batchnorms(ThroughAProperty()) == []
