"""lowbit: post-training quantization for PyTorch.

    qmodel = lowbit.quantize(model, calib_data, weights_bits=4, activation_bits=8)
    lowbit.save(qmodel, "m.lowbit"); qmodel = lowbit.load("m.lowbit")
    lowbit.export(qmodel, "m.onnx", example_input)     # ONNX QDQ for onnxruntime
    metrics = lowbit.evaluate(qmodel, test_data)
    qmodel = lowbit.finetune(qmodel, train_data, epochs=3)  # quantization-aware fine-tuning
    qmodel = lowbit.quantize(model, calib_data, mixed=lowbit.Budget(weights_cr=8), method="brecq")
    images = lowbit.synthesize(model, n_images=1024, input_shape=(1, 28, 28), mean=(0.2860,), std=(0.3530,))
"""

from lowbit.version import __version__  # noqa: E402
from lowbit.api import load, quantize  # noqa: E402
from lowbit.config import Override, QuantConfig  # noqa: E402
from lowbit.data.synthesize import SynthOptions, synthesize  # noqa: E402
from lowbit.errors import LowbitError  # noqa: E402
from lowbit.evaluate import Metrics, evaluate  # noqa: E402
from lowbit.io.lowbit_file import save  # noqa: E402
from lowbit.mixed import Budget  # noqa: E402
from lowbit.qat import FinetuneOptions, finetune  # noqa: E402
from lowbit.spec import QuantSpec  # noqa: E402



def __getattr__(name: str):
    """``lowbit.export`` loads the ONNX exporter on first use: ``import lowbit`` stays as fast without it."""
    if name == "export":
        from lowbit.deploy import export

        return export
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")


__all__ = ["quantize", "save", "load", "export", "evaluate", "Metrics", "QuantConfig", "QuantSpec", "Override", "Budget",
           "synthesize", "SynthOptions", "finetune", "FinetuneOptions", "LowbitError", "__version__"]
