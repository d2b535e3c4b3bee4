import torch

from lowbit import calibrate as calibrate_module
from lowbit.algorithms.bias_correction import correct_biases
from lowbit.calibrate import calibrate_activations, calibrate_weights
from lowbit.config import QuantConfig
from lowbit.graph import prepare
from lowbit.layers import quant_layers


def test_known_covariances_are_reused_and_give_the_grids_a_fresh_measurement_gives(residual_net, images, monkeypatch):
    """Quantized copies of one model (mixed precision's candidate widths) see the same float inputs."""
    first = prepare(residual_net, QuantConfig.from_bits(4, None))
    known = calibrate_weights(first, [images])
    assert known
    measured = []
    real = calibrate_module.input_covariances

    def spy(model, batches, wanted, seed):
        measured.extend(wanted)
        return real(model, batches, wanted, seed)

    monkeypatch.setattr(calibrate_module, "input_covariances", spy)
    second = prepare(residual_net, QuantConfig.from_bits(3, None))
    reused = calibrate_weights(second, [images], known=known)
    assert measured == [] and reused.keys() == known.keys()
    fresh = prepare(residual_net, QuantConfig.from_bits(3, None))
    calibrate_weights(fresh, [images])
    assert measured  # measured when nothing is known
    for (_, a), (_, b) in zip(quant_layers(second), quant_layers(fresh)):
        assert torch.equal(a.weight_quant.scale, b.weight_quant.scale)



class CountedBatches(list):
    """Calibration batches that count how often they are read."""

    reads = 0

    def __iter__(self):
        self.reads += 1
        return super().__iter__()


def test_float16_grids_and_weights_send_no_calibration_image_through_the_model(residual_net, images):
    """A float16 cast has no range to observe and no rounding shift to correct."""
    for bits, reads in (("fp16", 0), (8, 1)):
        qmodel = prepare(residual_net, QuantConfig.from_bits(bits, bits))
        calibrate_weights(qmodel, [])
        batches = CountedBatches([images])
        calibrate_activations(qmodel, batches)
        assert batches.reads == reads
        correct_biases(qmodel, batches)
        assert batches.reads == 2 * reads
