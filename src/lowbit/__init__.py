"""lowbit: post-training quantization for PyTorch.

    qmodel = lowbit.quantize(model, calib_data, weights_bits=4, activation_bits=8)
    lowbit.save(qmodel, "m.lowbit"); qmodel = lowbit.load("m.lowbit")
    metrics = lowbit.evaluate(qmodel, test_data)
    qmodel = lowbit.quantize(model, calib_data, mixed=lowbit.Budget(weights_cr=8), method="brecq")
    images = lowbit.synthesize(model, n_images=1024, input_shape=(1, 28, 28), mean=(0.2860,), std=(0.3530,))
"""

__version__ = "0.1.0"

from lowbit.api import quantize  # noqa: E402
from lowbit.config import Override, QuantConfig  # noqa: E402
from lowbit.data.synthesize import SynthOptions, synthesize  # noqa: E402
from lowbit.errors import LowbitError  # noqa: E402
from lowbit.evaluate import Metrics, evaluate  # noqa: E402
from lowbit.io.lowbit_file import load, save  # noqa: E402
from lowbit.mixed import Budget  # noqa: E402
from lowbit.spec import QuantSpec  # noqa: E402

__all__ = ["quantize", "save", "load", "evaluate", "Metrics", "QuantConfig", "QuantSpec", "Override", "Budget",
           "synthesize", "SynthOptions", "LowbitError", "__version__"]
