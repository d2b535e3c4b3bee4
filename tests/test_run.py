"""``quantize_evaluate_save``: the run behind ``lowbit quantize``, usable from Python with the same figures."""

import torch

import lowbit
from lowbit.config import QuantConfig
from lowbit.data import DatasetInfo
from lowbit.io.lowbit_file import read_record
from lowbit.mixed import Budget
from lowbit.run import float_file_size, quantize_evaluate_save

INFO = DatasetInfo("toy", 10, (3, 16, 16), (0.0,), (1.0,), tuple("abcdefghij"))


def _test_set(model, images):
    with torch.no_grad():
        return images, model(images).argmax(1)  # labels the float model gets right


def test_run_evaluates_both_models_and_saves_what_it_reports(residual_net, images, tmp_path):
    out = tmp_path / "q.lowbit"
    result = quantize_evaluate_save(residual_net, images, QuantConfig.from_bits(2, 2), out, model_name="net",
                                    info=INFO, test_set=_test_set(residual_net, images),
                                    calib_record={"calibration": "test images"}, per_layer=True)
    assert result["float_metrics"]["top1"] == 1.0 and result["quant_metrics"]["top1"] < 1.0
    assert result["quant_file_bytes"] == out.stat().st_size < result["float_file_bytes"] == float_file_size(residual_net)
    record = read_record(out)
    assert record.quant_metrics["top1"] == result["quant_metrics"]["top1"]
    assert record.float_metrics["top1"] == 1.0
    assert len(result["per_layer"]) == len(list(lowbit.layers.quant_layers(lowbit.load(out, residual_net))))


def test_mixed_run_writes_the_allocation_beside_the_model(residual_net, images, tmp_path):
    out = tmp_path / "m.lowbit"
    mixed = {"mixed": Budget(weights_cr=6, bits=(2, 4, 8)), "sensitivity": "measured", "sensitivity_images": 16}
    result = quantize_evaluate_save(residual_net, images, QuantConfig.from_bits(8, 8), out, model_name="net",
                                    mixed=mixed)
    csv_path, png_path = map(type(out), result["allocation_files"])
    assert csv_path == out.with_suffix(".allocation.csv") and png_path.stat().st_size > 0
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 1 + len(result["mixed"]["layers"])
    assert "float_metrics" not in result  # no test set given: nothing evaluated


def test_weights_only_too_reports_the_weights_only_model_on_the_same_images(residual_net, images, tmp_path):
    from lowbit.evaluate import evaluate

    test_set = _test_set(residual_net, images)
    config = QuantConfig.from_bits(2, 2)
    result = quantize_evaluate_save(residual_net, images, config, tmp_path / "q.lowbit", model_name="net",
                                    info=INFO, test_set=test_set, weights_only_too=True)
    alone = lowbit.quantize(residual_net, images, QuantConfig.from_bits(2, None))
    assert result["weights_only_metrics"] == evaluate(alone, test_set, class_names=INFO.classes).to_dict()
    assert result["weights_only_metrics"] != result["quant_metrics"]
    assert read_record(tmp_path / "q.lowbit").config.activations is not None
