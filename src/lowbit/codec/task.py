"""What quantizing a learned image codec needs beyond a classifier's run.

- The model keeps its own class (``compress``, ``decompress`` and ``update`` live on it), so its layers are
  swapped in place rather than traced; GDN/IGDN become quantized layers too (:mod:`lowbit.codec.gdn`).
- After quantization the entropy models' tables are rebuilt from the parameters the quantized model holds,
  so that real bitstreams code at the quantized model's rate; after loading, the tables read from the file are
  checked before the range coder ever sees them (a malformed table can crash or hang it).
- Under round-to-nearest, a synthesis network's input latents that are integers plus per-channel medians get a
  grid that holds them exactly where their range allows (:mod:`lowbit.codec.latent_grid`).
- A quantized hyperprior synthesis ``h_s`` gets static activation grids and is computed in exact integers
  (:mod:`lowbit.codec.exact`), so that encoder and decoder pick the same probability tables on any machine; so
  do an autoregressive codec's context model and entropy-parameter network (:mod:`lowbit.codec.autoregressive`).
- ``scope="entropy"`` quantizes only the entropy-coding networks (``h_a``/``h_s``, a context model and its
  entropy-parameter network, or a latent codec holding them) and keeps the analysis and synthesis transforms
  float.
- A saved codec records its architecture and channel counts, so ``lowbit.load`` rebuilds it from the file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from lowbit.codec.compressai_modules import compressai_module
from lowbit.codec.autoregressive import has_exact_context, install_exact_context
from lowbit.codec.exact import CHANNEL_CONTEXT, install_exact_path, is_exact, parameter_networks
from lowbit.codec.latent_grid import align_latent_grids
from lowbit.codec.masked_conv import QMaskedConv2d
from lowbit.config import Override, QuantConfig
from lowbit.errors import LowbitError
from lowbit.io.run_record import CODEC_TASK, CodecArchRecord
from lowbit.layers import QuantLayer

TASK = CODEC_TASK  # this task's name in the task registry and in saved architecture records
Scope = Literal["all", "entropy"]
SCOPES: tuple[Scope, ...] = ("all", "entropy")
SENSITIVITY = "rate-distortion"  # the mixed-precision metric for codecs (lowbit.codec.rd_sensitivity)
# CompressAI's names for the entropy-coding parts of a codec: the entropy models and the hyperprior networks
ENTROPY_MODELS = ("entropy_bottleneck", "gaussian_conditional")
# (CompressAI's latent-codec models hold all of them, and their entropy models, in ``latent_codec``)
ENTROPY_NETWORKS = ("h_a", "h_s", "context_prediction", "entropy_parameters", "latent_codec")
ENTROPY_PARTS = (*ENTROPY_NETWORKS, *ENTROPY_MODELS)
CDF_TOTAL = 1 << 16  # CompressAI's tables are 16-bit cumulative frequencies


def is_codec(model: nn.Module) -> bool:
    """A model with CompressAI's codec interface (``compress``, ``decompress``, ``update``)."""
    return all(callable(getattr(model, name, None)) for name in ("compress", "decompress", "update"))


def setup() -> None:
    """Register the codec's own quantized layer types (GDN, masked convolutions) and its mixed-precision
    sensitivity before a codec is prepared."""
    from lowbit.codec import rd_sensitivity
    from lowbit.codec.gdn import register_gdn
    from lowbit.codec.masked_conv import register_masked_conv

    register_gdn()
    register_masked_conv()
    rd_sensitivity.register()


def configure(model: nn.Module, config: QuantConfig) -> QuantConfig:
    """Give the networks that compute the entropy parameters (``h_s``, and an autoregressive codec's context
    model and entropy-parameter network, wherever CompressAI's latent codecs nest them) static activation grids
    when the config's are dynamic.

    The decoder recomputes them to find each latent's probability table; a range measured per batch would make
    that depend on the batch, and only static grids let :mod:`lowbit.codec.exact` compute them in exact
    integers. The overrides are appended, so the user's own overrides still win, and they are saved with the
    config.
    """
    acts = config.activations
    if acts is None or not acts.dynamic:
        return config
    static = replace(acts, dynamic=False)
    added = tuple(Override(f"{name}*", activations=static) for name, _ in parameter_networks(model))
    return replace(config, overrides=config.overrides + added)


def unequalized(model: nn.Module) -> tuple[str, ...]:
    """The entropy-parameter networks, kept out of range equalization: their inputs are coded latents whose
    rare channels the calibration crops barely reach, and an equalized channel has no headroom left for them
    (a clipped scale or mean costs bits on every latent it codes)."""
    return tuple(name for name, _ in parameter_networks(model))


def before_calibration(qmodel: nn.Module) -> None:
    """An autoregressive codec's forward rounds its latents to integers, but its coding loops produce integers
    plus the means the context model predicts: the inputs that read them (the synthesis transform's first layer,
    the context model) must not get the grid of the integers (:mod:`lowbit.lattice`), which would round the
    means away in every decoded image, but a range over the latents."""
    if getattr(qmodel, "context_prediction", None) is None:
        return
    first = next((m for m in getattr(qmodel, "g_s", nn.Module()).modules() if isinstance(m, QuantLayer)), None)
    for layer in (qmodel.context_prediction, first):
        if getattr(layer, "input_quant", None) is not None:
            layer.input_quant.lattice = False


def correct_nearest(qmodel: nn.Module, batches: list[torch.Tensor]) -> None:
    """Round-to-nearest's grids that hold the synthesis networks' input latents exactly
    (:mod:`lowbit.codec.latent_grid`); learned rounding reconstructs against the calibrated ones instead."""
    align_latent_grids(qmodel, batches)


def finish(qmodel: nn.Module) -> None:
    """Rebuild the entropy tables from the quantized model's parameters (``update(force=True)``), and compute
    the entropy parameters in exact integers where they are quantized on static grids."""
    qmodel.update(force=True)
    install_exact_path(qmodel)
    install_exact_context(qmodel)


def _kinds(names: list[str]) -> str:
    """Network names by kind, counted: ``h_s, entropy_parameters x5, ...`` (ELIC has one of each per group)."""
    kinds = Counter(CHANNEL_CONTEXT if f".{CHANNEL_CONTEXT}." in f".{n}" else n.split(".")[-1] for n in names)
    return ", ".join(kind if count == 1 else f"{kind} x{count}" for kind, count in kinds.items())


def float_parameter_networks(qmodel: nn.Module) -> list[str]:
    """The codec's entropy-parameter networks (and coding loop) that compute in float, by name."""
    floating = [name for name, network in parameter_networks(qmodel) if not is_exact(network)]
    if hasattr(qmodel, "context_prediction") and not has_exact_context(qmodel):
        floating.append("the coding loop's context model")
    return floating


def exact_entropy_parameters(qmodel: nn.Module) -> str | None:
    """What the CLI says of how a codec computes the parameters that choose each latent's probability table:
    None for a codec without such networks (its tables are fixed)."""
    networks = parameter_networks(qmodel)
    if not networks:
        return None
    floating = float_parameter_networks(qmodel)
    if floating:
        return (f"entropy parameters of {_kinds(floating)} computed in float (not quantized on static integer "
                "grids): decoding on another machine is not guaranteed bit-exact")
    return (f"entropy parameters in exact integers ({_kinds([name for name, _ in networks])}): bitstreams decode "
            "the same on any machine")


def check_loaded(qmodel: nn.Module) -> None:
    """Check the entropy tables, bounds and context-model masks read from a file, and restore the exact
    entropy-parameter paths."""
    check_tables(qmodel)
    for name, module in qmodel.named_modules():
        unmasked = module.unmasked_weights() if isinstance(module, QMaskedConv2d) else 0
        if unmasked:
            raise LowbitError(f"{name}: {unmasked} weights of the masked context model are not zero where its mask "
                              "hides the latents not yet decoded; the file was edited, quantize the codec again")
    record = getattr(qmodel, "lowbit_arch", None)
    if isinstance(record, dict) and record.get("task") == TASK:  # rebuilt from the file's own record
        check_entropy_bounds(rebuild(record), qmodel.state_dict(), "the file")
    install_exact_path(qmodel)
    install_exact_context(qmodel)


def check_entropy_bounds(fresh: nn.Module, state: dict[str, torch.Tensor], path: object) -> None:
    """The entropy models' lower bounds (on likelihoods and on scales) are constants of the architecture, stored in
    the state dict only because CompressAI keeps them as buffers: ``state`` must hold the values of ``fresh``, the
    architecture before loading. A file whose bounds differ codes with other tables, and a likelihood bound of
    zero lets training reach an infinite rate."""
    for name in ENTROPY_MODELS:
        for key, value in getattr(fresh, name).named_buffers() if hasattr(fresh, name) else ():
            found = state.get(f"{name}.{key}")
            if key.endswith("bound") and found is not None and not torch.equal(found, value):
                raise LowbitError(f"{path}: {name}.{key} is {found.flatten().tolist()}, not the architecture's "
                                  f"{value.flatten().tolist()}; the file was edited or saved in a lower precision, "
                                  "re-save it from a float model with the architecture's bounds")


def arch_record(name: str, n: int, m: int) -> dict[str, Any]:
    """The architecture record a saved codec carries (what :func:`rebuild` reads back)."""
    return CodecArchRecord(name, int(n), int(m)).to_dict()


def rebuild(record: dict[str, Any]) -> nn.Module:
    """A freshly initialised codec from its architecture record (weights come from the file)."""
    from lowbit.codec.architectures import codec_architecture

    setup()
    arch = CodecArchRecord.from_dict(record)  # the header's own checks: known keys, channels within bounds
    # CompressAI's entropy models compute on CPU tensors while they are built, so they cannot be built on the
    # meta device; the channel bound caps what this allocates before the file's index is checked.
    with torch.device("cpu"):
        model = codec_architecture(arch.name).create(arch.n, arch.m)
    model.lowbit_arch = arch.to_dict()
    return model


def scope_overrides(model: nn.Module, scope: Scope) -> tuple[Override, ...]:
    """Overrides keeping every part outside ``scope`` float: nothing for ``all``; for ``entropy``, the
    analysis and synthesis transforms (every top-level part that is not an entropy-coding network)."""
    if scope not in SCOPES:
        raise LowbitError(f"unknown scope {scope!r}; choose one of: {', '.join(SCOPES)}")
    if scope == "all":
        return ()
    parts = [name for name, _ in model.named_children()]
    networks = [p for p in parts if p in ENTROPY_NETWORKS]
    if not networks:
        raise LowbitError(f"{type(model).__name__} has no entropy-coding network to quantize (its entropy model is "
                          "a table of learned frequencies); use scope all, or a hyperprior codec")
    return tuple(Override(f"{p}*", keep_float=True) for p in parts if p not in ENTROPY_PARTS)


def check_tables(model: nn.Module) -> None:
    """Refuse entropy tables no CompressAI ``update`` could have produced, before the range coder reads them.

    Every row must start at 0, rise strictly over its stated length and end at 2^16; offsets must be finite
    integers and lengths within the table.
    """
    EntropyModel = compressai_module("entropy_models").EntropyModel

    for name, module in model.named_modules():
        if not isinstance(module, EntropyModel):
            continue
        cdf, lengths, offsets = module._quantized_cdf, module._cdf_length, module._offset
        where = name or "entropy model"
        if cdf.dim() != 2 or lengths.dim() != 1 or offsets.dim() != 1 or not (
                cdf.shape[0] == lengths.numel() == offsets.numel()) or cdf.shape[1] < 2:
            raise LowbitError(f"{where}: entropy tables of inconsistent shapes; the file is damaged, save it again")
        if cdf.dtype != torch.int32 or lengths.dtype != torch.int32 or offsets.dtype != torch.int32:
            raise LowbitError(f"{where}: entropy tables are not int32; the file is damaged, save it again")
        if bool(((lengths < 2) | (lengths > cdf.shape[1])).any()):
            raise LowbitError(f"{where}: entropy table lengths out of range; the file is damaged, save it again")
        positions = torch.arange(cdf.shape[1])
        inside = positions[None, :] < lengths[:, None]
        rising = (cdf[:, 1:] > cdf[:, :-1]) | ~inside[:, 1:]
        last = cdf.gather(1, (lengths - 1).long()[:, None])[:, 0]
        if bool((cdf[:, 0] != 0).any()) or not bool(rising.all()) or bool((last != CDF_TOTAL).any()):
            raise LowbitError(f"{where}: entropy tables are not cumulative frequencies; the file is damaged, "
                              "save it again")
