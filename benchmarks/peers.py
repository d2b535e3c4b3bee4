"""Peer tools run side by side with lowbit in the benchmarks (same model, calibration images, test set).

- Sony's Model Compression Toolkit (MCT) 2.6.1 plain PTQ. Bit widths go through its target platform
  capabilities: the IMX500 v1 TPC's op configs with the kernel bits and activation bits replaced, rebuilt with
  its own ``generate_tpc`` (the route its documentation gives for custom configurations). Its defaults are
  kept otherwise: per-channel symmetric weights and power-of-two activation thresholds.
- torch.ao FX graph-mode static int8 PTQ (the x86/fbgemm backend), a real int8 CPU model, and its QAT at W8A8.
"""

from __future__ import annotations

import copy
import warnings
from typing import Iterator

import torch
from torch import nn

from lowbit.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD


def mct_version() -> str:
    import model_compression_toolkit as mct

    return mct.__version__


def mct_tpc(weights_bits: int, activation_bits: int):
    """The default (IMX500 v1) TPC with every kernel at ``weights_bits`` and activations at ``activation_bits``."""
    from model_compression_toolkit.target_platform_capabilities.constants import KERNEL_ATTR, WEIGHTS_N_BITS
    from model_compression_toolkit.target_platform_capabilities.tpc_models.imx500_tpc.v1_0 import tpc as imx500

    linear, _, default = imx500.get_op_quantization_configs()
    linear = linear.clone_and_edit(attr_to_edit={KERNEL_ATTR: {WEIGHTS_N_BITS: weights_bits}},
                                   activation_n_bits=activation_bits, supported_input_activation_n_bits=(activation_bits,))
    default = default.clone_and_edit(activation_n_bits=activation_bits,
                                     supported_input_activation_n_bits=(activation_bits,))
    return imx500.generate_tpc(default_config=default, base_config=linear, mixed_precision_cfg_list=[linear],
                               name=f"lowbit_w{weights_bits}a{activation_bits}")


def _representative(batches: list[torch.Tensor]):
    def gen() -> Iterator[list[torch.Tensor]]:
        for b in batches:
            yield [b]
    return gen


def mct_ptq(model: nn.Module, calib_batches: list[torch.Tensor], weights_bits: int, activation_bits: int) -> nn.Module:
    """MCT plain post-training quantization at a single bit configuration; returns its quantized module."""
    import model_compression_toolkit as mct

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel, _ = mct.ptq.pytorch_post_training_quantization(
            copy.deepcopy(model).eval(), _representative(calib_batches),
            target_platform_capabilities=mct_tpc(weights_bits, activation_bits))
    return qmodel.cpu().eval()


def mct_gptq(model: nn.Module, calib_batches: list[torch.Tensor], weights_bits: int, activation_bits: int,
             epochs: int) -> nn.Module:
    """MCT gradient-based PTQ with Hessian-weighted loss (its EPTQ), ``epochs`` passes over the batches."""
    import model_compression_toolkit as mct

    config = mct.gptq.get_pytorch_gptq_config(n_epochs=epochs, use_hessian_based_weights=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel, _ = mct.gptq.pytorch_gradient_post_training_quantization(
            copy.deepcopy(model).eval(), _representative(calib_batches), gptq_config=config,
            target_platform_capabilities=mct_tpc(weights_bits, activation_bits))
    return qmodel.cpu().eval()


def torchao_fx_int8_ptq(model: nn.Module, calib_batches: list[torch.Tensor], backend: str = "x86") -> nn.Module:
    """torch.ao FX static int8 PTQ (per-channel weights, per-tensor activations) as a converted int8 model."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if backend not in torch.backends.quantized.supported_engines:
        backend = "fbgemm"
    torch.backends.quantized.engine = backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping(backend), (calib_batches[0],))
        with torch.no_grad():
            for b in calib_batches:
                prepared(b)
        return convert_fx(prepared).eval()


class TorchAoQAT(nn.Module):
    """A torch.ao FX QAT model whose observers track ranges while training and stand still in eval mode, so that
    scoring held-out images does not move its grids (torch.ao's fake quantizers observe in either mode)."""

    def __init__(self, prepared: nn.Module) -> None:
        super().__init__()
        self.prepared = prepared

    def train(self, mode: bool = True) -> "TorchAoQAT":
        from torch.ao.quantization import disable_observer, enable_observer

        super().train(mode)
        self.prepared.apply(enable_observer if mode else disable_observer)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prepared(x)


def torchao_qat_model(model: nn.Module, calib_batches: list[torch.Tensor], backend: str = "x86") -> TorchAoQAT:
    """torch.ao FX QAT at W8A8 (per-channel weights, moving-average activation ranges), ranges first observed on
    the calibration images; batch-norm statistics frozen, as lowbit keeps them folded and fixed."""
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    if backend not in torch.backends.quantized.supported_engines:
        backend = "fbgemm"
    torch.backends.quantized.engine = backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_qat_fx(copy.deepcopy(model).train(), get_default_qat_qconfig_mapping(backend),
                                  (calib_batches[0],))
    prepared.apply(freeze_bn_stats)
    with torch.no_grad():
        for b in calib_batches:
            prepared(b)
    return TorchAoQAT(prepared).eval()


def torchao_qat_convert(qat_model: TorchAoQAT) -> nn.Module:
    """The int8 model of a trained torch.ao QAT model (quantized kernels, x86/fbgemm)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(copy.deepcopy(qat_model.prepared).eval()).eval()


def mct_mixed_precision(model: nn.Module, calib_batches: list[torch.Tensor], weights_memory_bytes: float,
                        gptq_epochs: int | None = None) -> nn.Module:
    """MCT mixed-precision PTQ over its default kernel options (8, 4, 2 bits; activations 8 bits) under a
    weights-memory target in bytes (``ResourceUtilization(weights_memory=...)``); with ``gptq_epochs``, followed
    by its gradient-based PTQ with Hessian-weighted loss for that many passes over the batches (the learned
    rounding peer of lowbit's learned methods)."""
    import model_compression_toolkit as mct
    from model_compression_toolkit.target_platform_capabilities.tpc_models.imx500_tpc.v1_0 import tpc as imx500

    core = mct.core.CoreConfig(mixed_precision_config=mct.core.MixedPrecisionQuantizationConfig())
    common = dict(target_resource_utilization=mct.core.ResourceUtilization(weights_memory=weights_memory_bytes),
                  core_config=core, target_platform_capabilities=imx500.get_tpc())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if gptq_epochs is None:
            qmodel, _ = mct.ptq.pytorch_post_training_quantization(
                copy.deepcopy(model).eval(), _representative(calib_batches), **common)
        else:
            gptq = mct.gptq.get_pytorch_gptq_config(n_epochs=gptq_epochs, use_hessian_based_weights=True)
            qmodel, _ = mct.gptq.pytorch_gradient_post_training_quantization(
                copy.deepcopy(model).eval(), _representative(calib_batches), gptq_config=gptq, **common)
    return qmodel.cpu().eval()


class _FromImageNetPixels(nn.Module):
    """Feeds a model images normalized the torchvision way (MCT's data generation only makes those, with 3
    channels): back to [0, 1] pixels, to grey when the model takes one channel, then the model's normalization."""

    def __init__(self, model: nn.Module, channels: int, mean, std) -> None:
        super().__init__()
        self.model, self.channels = model, channels
        self.register_buffer("in_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("in_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def convert(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.in_std + self.in_mean
        if self.channels == 1:
            pixels = pixels.mean(dim=1, keepdim=True)
        return (pixels - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.convert(x))


def mct_generate(model: nn.Module, n_images: int, input_shape, mean, std, n_iter: int,
                 batch_size: int = 32) -> torch.Tensor:
    """MCT's data generation (``mct.data_generation``, its DGH implementation) with its defaults except the
    number of iterations; images are returned in the model's own input space."""
    import model_compression_toolkit as mct

    wrapper = _FromImageNetPixels(model, input_shape[0], mean, std).eval()
    config = mct.data_generation.get_pytorch_data_generation_config(
        n_iter=n_iter, data_gen_batch_size=batch_size, extra_pixels=max(1, round(input_shape[1] / 7)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = mct.data_generation.pytorch_data_generation_experimental(wrapper, n_images, input_shape[1], config)
    images = torch.cat(images) if isinstance(images, (list, tuple)) else images
    with torch.no_grad():
        return wrapper.convert(images.cpu().float())


def mct_qat_model(model: nn.Module, calib_batches: list[torch.Tensor], weights_bits: int | None,
                  activation_bits: int | None, weights_memory_bytes: float | None = None) -> nn.Module:
    """MCT's PyTorch QAT model (its PTQ first, then LSQ quantizers on weights and activations, trainable).

    Either one width pair through :func:`mct_tpc`, or (``weights_memory_bytes``) its mixed precision over the
    default TPC's kernel options (8, 4, 2 bits; activations 8 bits) under that weights-memory target.
    """
    import model_compression_toolkit as mct
    from model_compression_toolkit.qat import QATConfig
    from model_compression_toolkit.trainable_infrastructure import TrainingMethod
    from model_compression_toolkit.target_platform_capabilities.tpc_models.imx500_tpc.v1_0 import tpc as imx500

    qat_config = QATConfig(weight_training_method=TrainingMethod.LSQ, activation_training_method=TrainingMethod.LSQ)
    kwargs: dict = {"qat_config": qat_config}
    if weights_memory_bytes is not None:
        mixed = mct.core.MixedPrecisionQuantizationConfig()
        kwargs.update(core_config=mct.core.CoreConfig(mixed_precision_config=mixed),
                      target_resource_utilization=mct.core.ResourceUtilization(weights_memory=weights_memory_bytes),
                      target_platform_capabilities=imx500.get_tpc())
    else:
        kwargs["target_platform_capabilities"] = mct_tpc(weights_bits, activation_bits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat_model, _ = mct.qat.pytorch_quantization_aware_training_init_experimental(
            copy.deepcopy(model).eval(), _representative(calib_batches), **kwargs)
    return qat_model.cpu()


def mct_qat_finalize(qat_model: nn.Module) -> nn.Module:
    """The inference model of a trained MCT QAT model (its quantizers made fixed)."""
    import model_compression_toolkit as mct

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mct.qat.pytorch_quantization_aware_training_finalize_experimental(qat_model).eval()


def is_mct_quantizer_parameter(name: str) -> bool:
    """Whether a parameter of an MCT QAT model is a step size or range (the rest are weights and biases)."""
    return name.endswith(("ptq_threshold_tensor", "_min", "_max"))


def mct_mixed_tpc(bits: tuple[int, ...] = (2, 4, 8)):
    """The default (IMX500 v1) TPC whose kernel layers choose every (weights, activations) pair of ``bits``:
    EPTQ's mixed-precision search space (its other layers keep 8-bit outputs)."""
    from model_compression_toolkit.target_platform_capabilities.constants import KERNEL_ATTR, WEIGHTS_N_BITS
    from model_compression_toolkit.target_platform_capabilities.tpc_models.imx500_tpc.v1_0 import tpc as imx500

    linear, _, default = imx500.get_op_quantization_configs()
    options = [linear.clone_and_edit(attr_to_edit={KERNEL_ATTR: {WEIGHTS_N_BITS: w}}, activation_n_bits=a,
                                     supported_input_activation_n_bits=tuple(bits))
               for w in sorted(bits, reverse=True) for a in sorted(bits, reverse=True)]
    default = default.clone_and_edit(supported_input_activation_n_bits=tuple(bits))
    return imx500.generate_tpc(default_config=default, base_config=options[0], mixed_precision_cfg_list=options,
                               name="lowbit_mixed_weights_activations")


def mct_total_memory(model: nn.Module, calib_batches: list[torch.Tensor], total_cr: float,
                     bits: tuple[int, ...] = (2, 4, 8)) -> tuple[nn.Module, float]:
    """MCT mixed-precision PTQ under a total-memory target (``ResourceUtilization(total_memory=...)``, weights
    plus activations as MCT measures them) of its float32 total divided by ``total_cr``.

    MCT reports its resource data at 8 bits (one byte per weight and per activation element), so float32 is
    four times that. Returns the quantized model and MCT's float32 total in bytes.
    """
    import model_compression_toolkit as mct

    tpc = mct_mixed_tpc(bits)
    core = mct.core.CoreConfig(mixed_precision_config=mct.core.MixedPrecisionQuantizationConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = mct.core.pytorch_resource_utilization_data(copy.deepcopy(model).eval(), _representative(calib_batches),
                                                          core_config=core, target_platform_capabilities=tpc)
        float_total = 4.0 * (data.weights_memory + data.activation_memory)
        qmodel, _ = mct.ptq.pytorch_post_training_quantization(
            copy.deepcopy(model).eval(), _representative(calib_batches),
            target_resource_utilization=mct.core.ResourceUtilization(total_memory=float_total / total_cr),
            core_config=core, target_platform_capabilities=tpc)
    return qmodel.cpu().eval(), float_total


@torch.no_grad()
def mct_memory(qmodel: nn.Module, example: torch.Tensor) -> tuple[float, float, list[int], list[int]]:
    """Weight codes (parameters x bits / 8) of an MCT model's kernel layers and its largest kernel-layer input
    (one sample, at the width of the activation quantizer that produced it; float32 when none did): the
    measure lowbit's ``total_cr`` uses. Also the weight and input widths in model order."""
    from mct_quantizers import PytorchActivationQuantizationHolder, PytorchQuantizationWrapper

    produced: dict[int, tuple[int, torch.Tensor]] = {}  # the tensor is kept so that its id is not reused
    weight_bytes, largest, wbits, abits = 0.0, 0.0, [], []
    hooks = []

    def holder_hook(module, _inputs, output):
        produced[id(output)] = (module.activation_holder_quantizer.num_bits, output)

    def layer_hook(module, inputs, _output):
        nonlocal weight_bytes, largest
        x = inputs[0]
        bits, source = produced.get(id(x), (32, None))
        bits = bits if source is x else 32
        quantizer = module.weights_quantizers.get("weight")
        w = quantizer.num_bits if quantizer is not None else 32
        weight_bytes += module.layer.weight.numel() * w / 8
        largest = max(largest, x[0].numel() * bits / 8)
        wbits.append(w)
        abits.append(bits)

    for m in qmodel.modules():
        if isinstance(m, PytorchActivationQuantizationHolder):
            hooks.append(m.register_forward_hook(holder_hook))
        elif isinstance(m, PytorchQuantizationWrapper) and isinstance(getattr(m, "layer", None),
                                                                      (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(layer_hook))
    try:
        qmodel(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return weight_bytes, largest, wbits, abits
