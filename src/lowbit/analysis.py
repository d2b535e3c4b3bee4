"""Per-layer error analysis: how far each quantized layer's output drifts from the float network's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.evaluate import sqnr_db
from lowbit.graph import activation_quantizers, prepare
from lowbit.hooks import watching_outputs
from lowbit.layers import quant_layers


@dataclass(frozen=True)
class LayerReport:
    """One weight layer: its bits, parameter count, weight SQNR and output SQNR (dB) against float."""

    name: str
    bits: int | str
    params: int
    weight_sqnr: float
    output_sqnr: float


def float_reference(float_model: nn.Module, qmodel: nn.Module) -> nn.Module:
    """The float model prepared with the same structure as ``qmodel`` (BN folded) and every quantizer off."""
    ref = prepare(float_model, qmodel.lowbit_info.config)
    for _, q in activation_quantizers(ref):
        q.set_state("off")
    return ref


def _capture(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str, out: torch.Tensor) -> None:
        outputs[name] = out.detach().to(torch.float32, copy=True)  # before an in-place activation rewrites it

    with watching_outputs(quant_layers(model), keep), torch.no_grad():
        model(x)
    return outputs


def per_layer_sqnr(float_model: nn.Module, qmodel: nn.Module, x: torch.Tensor) -> list[LayerReport]:
    """SQNR of every quantized layer's weights and outputs on input ``x`` (errors accumulate through depth)."""
    ref = float_reference(float_model, qmodel).to(x.device)
    ref_out, q_out = _capture(ref, x), _capture(qmodel, x)
    ref_layers = dict(quant_layers(ref))
    reports = []
    for name, layer in quant_layers(qmodel):
        w_ref = ref_layers[name].weight.detach()
        reports.append(LayerReport(name, layer.weight_quant.spec.bits, layer.weight.numel(),
                                   sqnr_db(w_ref, layer.weight.detach()), sqnr_db(ref_out[name], q_out[name])))
    return reports
