import pytest
import torch
from torch import nn

import lowbit
from conftest import ResidualNet, TinyViT, randomize_bn
from lowbit import LowbitError, QuantConfig
from lowbit.calibrate import calibrate
from lowbit.data import load_dataset
from lowbit.data.bn_statistics import SetStatistics
from lowbit.data.fashion_mnist import MEAN, STD
from lowbit.data.image_pipeline import ImagePipeline
from lowbit.data.synthesize import SynthOptions, noise_images, synthesize, valid_range
from lowbit.graph import activation_quantizers, prepare
from lowbit.models import build_model, bundled_checkpoint, load_checkpoint


def _bn_loss(model, images):
    stats = SetStatistics(model, 1)
    with torch.no_grad():
        model(images)
    loss = float(stats.loss(0))
    stats.remove()
    return loss


def test_bn_loss_falls_and_images_have_shape_and_range(device):
    net = randomize_bn(ResidualNet()).eval().to(device)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    short = synthesize(net, 24, (3, 16, 16), mean, std, iters=1, batch_size=8, output_loss_factor=0)
    long = synthesize(net, 24, (3, 16, 16), mean, std, iters=25, batch_size=8, output_loss_factor=0)
    assert short.shape == long.shape == (24, 3, 16, 16) and short.device.type == long.device.type == "cpu"
    net.cpu()
    low, high = valid_range(mean, std)
    assert (long >= low.view(1, 3, 1, 1) - 1e-6).all() and (long <= high.view(1, 3, 1, 1) + 1e-6).all()
    assert _bn_loss(net, long) < 0.8 * _bn_loss(net, short)
    assert all(p.requires_grad for p in net.parameters()) and not net.training  # model left as it was


def test_statistics_are_those_of_the_whole_set():
    net = nn.Sequential(nn.BatchNorm2d(3)).eval()
    net[0].running_mean.fill_(0.3)
    a, b = torch.randn(4, 3, 5, 5), torch.randn(6, 3, 5, 5) + 1
    stats = SetStatistics(net, 2)
    net(a)
    stats.loss(0)
    net(b)
    aggregated = float(stats.loss(1))
    assert aggregated == pytest.approx(_bn_loss(net, torch.cat([a, b])), rel=1e-5)
    assert aggregated != pytest.approx(_bn_loss(net, b), rel=1e-2)


def test_pipeline_crops_flips_and_clips():
    pipe = ImagePipeline((8, 8), 2, torch.tensor([-1.0]), torch.tensor([1.0]), smoothing_size=3)
    x = torch.randn(5, 1, 12, 12) * 3
    out = pipe.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == (5, 1, 8, 8) and out.abs().max() <= 1
    assert pipe.finalize(x).shape == (5, 1, 8, 8)


def _activation_steps(model, images):
    """The 8-bit min/max activation step sizes that calibrating on ``images`` sets."""
    q = prepare(model, QuantConfig.from_bits(8, 8, activation_observer="minmax"))
    calibrate(q, [images])
    return torch.stack([aq.scale.reshape(()) for _, aq in activation_quantizers(q)])


def test_synthetic_images_match_the_network_better_than_the_noise_they_start_from():
    """On the trained Fashion-MNIST ResNet-20, a few steps take the generated set's batch-norm statistics well
    towards the stored ones (half the noise's loss, or less) and bring the activation ranges calibration sets
    from them much closer to those real images set (on a log scale, less than 0.6 of the noise's distance)."""
    model = load_checkpoint(build_model("resnet20", num_classes=10, in_channels=1), bundled_checkpoint("resnet20"))
    test, _ = load_dataset("fashion-mnist", "test")
    real = torch.stack([test[i][0] for i in range(64)])
    synth = lowbit.synthesize(model, n_images=32, input_shape=(1, 28, 28), mean=MEAN, std=STD, iters=8)
    noise = noise_images(32, (1, 28, 28), MEAN, STD)
    assert synth.shape == noise.shape
    assert _bn_loss(model, synth) < 0.7 * _bn_loss(model, noise)
    reference = _activation_steps(model, real)

    def distance(images):
        return (_activation_steps(model, images) / reference).log().abs().mean().item()

    assert distance(synth) < 0.6 * distance(noise)


def test_models_without_batchnorm_get_a_clear_error():
    with pytest.raises(LowbitError, match="no batch-norm layers.*LayerNorm"):
        synthesize(TinyViT(), 4, (1, 16, 16), (0.5,), (0.5,), iters=1)


@pytest.mark.parametrize("kwargs,match", [({"input_shape": (28, 28)}, "channels, height, width"),
                                          ({"mean": (0.1, 0.2)}, "2 values but the input has 1"),
                                          ({"std": (0.0,)}, "std must be positive"),
                                          ({"n_images": 0}, "at least 1")])
def test_bad_arguments(kwargs, match):
    args = {"n_images": 4, "input_shape": (1, 16, 16), "mean": (0.5,), "std": (0.5,), **kwargs}
    with pytest.raises(LowbitError, match=match):
        synthesize(randomize_bn(ResidualNet(in_channels=1)), options=SynthOptions(iters=1), **args)
