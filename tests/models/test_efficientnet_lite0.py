import pytest
import torch
from torch import nn

from lowbit import LowbitError
from lowbit.models import build_model
from lowbit.models.efficientnet_lite0 import packaged_state_dict, timm_state_dict


def test_static_padding_leaves_plain_convolutions_with_the_same_outputs():
    import timm
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    reference = timm.create_model("tf_efficientnet_lite0", num_classes=10).eval()
    torch.manual_seed(0)  # the same initialization: padding changes module names, not weights
    model = build_model("efficientnet_lite0", num_classes=10, image_size=64)
    assert not any(isinstance(m, Conv2dSame) for m in model.modules())
    assert any(isinstance(m, nn.ZeroPad2d) for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    torch.fx.symbolic_trace(model)  # no run-time padding left to stop tracing


def test_packaged_weights_map_onto_every_parameter():
    import timm

    model = timm.create_model("tf_efficientnet_lite0")
    mapped = timm_state_dict(model, packaged_state_dict())
    expected = model.state_dict()
    assert set(mapped) == set(expected)
    assert all(mapped[k].shape == expected[k].shape for k in expected)
    pretrained = build_model("efficientnet_lite0", image_size=64, pretrained=True)
    assert torch.equal(pretrained.classifier.weight, mapped["classifier.weight"])


def test_packaged_weights_only_fit_imagenet_heads():
    with pytest.raises(LowbitError, match="1000 classes"):
        build_model("efficientnet_lite0", num_classes=10, pretrained=True)
