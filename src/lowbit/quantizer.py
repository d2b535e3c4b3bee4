"""``Quantizer``: a module that fake-quantizes one tensor according to a ``QuantSpec``.

It has an explicit state: ``observe`` (record statistics, pass values through), ``quantize`` (apply the
grid) or ``off`` (pass through). Scale and zero point are buffers so they travel with ``state_dict``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lowbit import qmath
from lowbit.input_covariance import InputCovariance
from lowbit.observers import ActivationObserver, static_qparams
from lowbit.spec import QuantSpec

State = Literal["observe", "quantize", "off"]


class Quantizer(nn.Module):
    """Fake-quantizer for activations (observer-calibrated or dynamic) and the grid holder for weights."""

    def __init__(self, spec: QuantSpec, seed: int = 0, device: torch.device | str | None = None) -> None:
        """``device``: where the quantized tensor lives. The grid is created there so that a quantizer added
        to a model on a GPU (or on the meta device) never holds CPU tensors next to the model's own."""
        super().__init__()
        self.spec = spec
        self.state: State = "off"
        self.seed = seed
        self.observer: ActivationObserver | None = None
        # False where the values seen while calibrating lie on a lattice that those quantized in use leave (an
        # autoregressive codec's latents: integers in its forward, integers plus predicted means when coded)
        self.lattice = True
        self.register_buffer("scale", torch.ones(1, device=device))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32, device=device))

    @property
    def bits(self) -> int | str:
        return self.spec.bits

    @property
    def qrange(self) -> tuple[int, int]:
        return qmath.qrange(int(self.spec.bits), self.spec.symmetric)

    @property
    def needs_calibration(self) -> bool:
        """Static integer grids need observed ranges; fp16 casts and dynamic ranges do not."""
        return not (self.spec.is_fp16 or self.spec.dynamic)

    def set_state(self, state: State) -> None:
        if state == "observe" and self.needs_calibration and self.observer is None:
            self.observer = ActivationObserver(self.spec, self.seed, lattice=self.lattice)
        self.state = state

    @property
    def device(self) -> torch.device:
        """Where the grid lives: the quantizer's buffers, which ``Module.to`` moves with the rest of the model."""
        return self.scale.device

    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor,
                    device: torch.device | str | None = None) -> None:
        """Install a grid (shapes may differ from the placeholders: per-channel grids are vectors).

        The grid goes to ``device``, by default this quantizer's own. Grids are often computed somewhere
        else (observers accumulate on the CPU, files are read onto the CPU) and must land next to the
        values they quantize, not where they were computed.
        """
        device = self.device if device is None else device
        if isinstance(self.scale, nn.Parameter):
            self.fix_scale()
        self.scale = scale.detach().float().reshape(-1).to(device)
        self.zero_point = zero_point.detach().to(torch.int32).reshape(-1).to(device)

    def learn_scale(self) -> nn.Parameter:
        """Make the step size a trainable parameter (LSQ-style gradients flow through fake_quantize)."""
        if not isinstance(self.scale, nn.Parameter):
            value = self.scale.detach().clone()
            del self._buffers["scale"]
            self.scale = nn.Parameter(value)
        return self.scale

    def fix_scale(self) -> None:
        """Turn a learned step size back into a buffer, kept positive."""
        if isinstance(self.scale, nn.Parameter):
            value = self.scale.detach().clone().clamp_min(qmath.MIN_SCALE)
            del self._parameters["scale"]
            self.register_buffer("scale", value)

    def finish_calibration(self) -> bool:
        """Turn observed statistics into a grid and start quantizing. False if nothing was observed."""
        if self.needs_calibration:
            if self.observer is None or not self.observer.seen:
                return False
            self.set_qparams(*self.observer.qparams())
        self.observer = None
        self.state = "quantize"
        return True

    def calibrate_to(self, x: torch.Tensor, covariance: InputCovariance | None = None) -> None:
        """Set the grid directly from a fully known tensor (weights), and for the ``output`` observer the
        covariance of the inputs it multiplies (see :mod:`lowbit.input_covariance`).

        The grid follows ``x``: a weight's grid must sit on the weight's device even if this quantizer was
        built elsewhere, or every forward pass would mix devices.
        """
        if self.needs_calibration:
            self.set_qparams(*static_qparams(x, self.spec, covariance), device=x.device)
        self.state = "quantize"

    def grid(self, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point shaped to broadcast against an ``ndim``-dimensional tensor."""
        if self.spec.granularity == "per_channel" and self.scale.numel() > 1:
            axis = self.spec.channel_axis(ndim)
            return qmath.channel_view(self.scale, axis, ndim), qmath.channel_view(self.zero_point, axis, ndim)
        return self.scale, self.zero_point

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` fake-quantized on this quantizer's grid, whatever its state (for weights, the nearest grid point)."""
        if self.spec.is_fp16:
            return qmath.fake_quantize_fp16(x)
        qmin, qmax = self.qrange
        if self.spec.dynamic:
            with torch.no_grad():
                scale, zp = qmath.choose_qparams(x.min(), x.max(), int(self.spec.bits), self.spec.symmetric)
            return qmath.fake_quantize(x, scale, zp, qmin, qmax)
        scale, zp = self.grid(x.dim())
        if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
            return qmath.fake_quantize(x, scale, zp, qmin, qmax)
        return qmath.fake_quantize_no_grad(x, scale, zp, qmin, qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.state == "off" or not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        if self.state == "observe":
            if self.observer is not None:
                self.observer.observe(x)
            return x
        return self.fake_quantize(x)

    def extra_repr(self) -> str:
        kind = "dynamic" if self.spec.dynamic else self.spec.granularity
        return f"bits={self.spec.bits}, {kind}, symmetric={self.spec.symmetric}, state={self.state}"
