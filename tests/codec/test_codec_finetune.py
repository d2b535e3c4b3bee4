"""Fine-tuning a quantized codec on its rate-distortion loss: it learns, keeps the model best on held-out photos
(the start included), leaves the latent grids exact and GDN valid, and saves and reloads bit-exactly."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from codec_helpers import photo_like, tiny_codec

import lowbit
import lowbit.codec.finetune as finetune_module
from lowbit.codec.finetune import (
    BETA_MIN,
    CodecFinetuneOptions,
    finetune_codec,
    next_lambda,
    split_photos,
)
from lowbit.codec.gdn import QGDN
from lowbit.codec.images import read_image, to_uint8
from lowbit.codec.latent_grid import first_layers
from lowbit.codec.photos import held_out_photos
from lowbit.codec.train import rate_distortion_loss
from lowbit.codec.zoo import open_codec
from lowbit.errors import LowbitError
from lowbit.layers import quant_layers

LMBDA = 0.01


def _photos(count: int = 6, side: int = 48) -> list[torch.Tensor]:
    return [torch.from_numpy(photo_like(side, side, seed=i)).permute(2, 0, 1).contiguous() for i in range(count)]


def _codec() -> torch.nn.Module:
    """A tiny codec whose latents span several integers (an untrained one rounds them all to zero)."""
    codec = tiny_codec()
    with torch.no_grad():
        codec.g_a[-1].weight.mul_(30)
    return codec


def _quantized(bits: int = 4) -> torch.nn.Module:
    crops = torch.stack(_photos(4, 32)).float() / 255
    return lowbit.quantize(_codec(), crops, weights_bits=bits, activation_bits=8)


def _codes(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: layer.qweight.clone() for name, layer in quant_layers(model)}


def _options(**kw) -> CodecFinetuneOptions:
    return CodecFinetuneOptions(**{"lmbda": LMBDA, "steps": 24, "lr": 3e-3, "batch_size": 4, "crop": 32,
                                   "val_crops": 4, "eval_every": 8, **kw})


def _x_hat(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)["x_hat"]


def test_finetuning_lowers_the_held_out_loss_and_keeps_the_best_step():
    start = _quantized()
    tuned = finetune_codec(start, _photos(), _options())
    run = tuned.lowbit_info.extra["finetune"]
    losses = {h["step"]: h["loss"] for h in run["history"]}
    assert sorted(losses) == [0, 8, 16, 24]
    assert run["kept_step"] == min(losses, key=losses.get) and run["kept_step"] > 0
    assert losses[run["kept_step"]] < losses[0]
    x = torch.stack(_photos(2, 32)).float() / 255
    assert not torch.equal(_x_hat(tuned, x), _x_hat(start, x))
    assert (run["train_photos"], run["held_out_photos"]) == (4, 2)


def test_weights_learn_through_their_quantizers_with_the_grids_held():
    start = _quantized()
    tuned = finetune_codec(start, _photos(), _options(scale_lr=1e-12))  # step sizes practically fixed
    assert tuned.lowbit_info.extra["finetune"]["kept_step"] > 0
    before, after = _codes(start), _codes(tuned)
    assert any(not torch.equal(before[n], after[n]) for n in before)  # integer codes moved


def test_the_start_is_returned_when_training_only_makes_it_worse(monkeypatch):
    start = _quantized()
    # gradient ascent on the loss: every checkpoint is worse on the held-out photos than the start
    monkeypatch.setattr(torch.optim, "Adam", functools.partial(torch.optim.Adam, maximize=True))
    tuned = finetune_codec(start, _photos(), _options())
    run = tuned.lowbit_info.extra["finetune"]
    assert run["kept_step"] == 0 and all(h["loss"] > run["history"][0]["loss"] for h in run["history"][1:])
    x = torch.stack(_photos(2, 32)).float() / 255
    assert torch.equal(_x_hat(tuned, x), _x_hat(start, x))


def test_the_synthesis_input_keeps_its_grid_while_the_others_learn():
    start = _quantized()
    tuned = finetune_codec(start, _photos(), _options())
    [(name, layer)] = first_layers(start)
    assert float(layer.input_quant.scale) >= 2 ** -8  # a real grid, not the floor of an all-zero input
    assert torch.equal(dict(first_layers(tuned))[name].input_quant.scale, layer.input_quant.scale)
    moved = [n for n, m in tuned.named_modules() if n.endswith("input_quant") and n != f"{name}.input_quant"
             and not torch.equal(m.scale, start.get_submodule(n).scale)]
    assert moved  # the activation step sizes were learned


def test_holding_the_rate_keeps_the_starting_models_bits():
    # a trained codec (this package's tiny ones spend their bits however lambda is set) at 8x its own lambda
    codec = open_codec("codec-factorized-small", 1)
    photos = [to_uint8(F.interpolate(read_image(p)[None], scale_factor=0.5, mode="area")[0])
              for p in held_out_photos()]
    start = lowbit.quantize(codec.model, torch.stack([p[:, :64, :64] for p in photos]).float() / 255,
                            weights_bits=8, activation_bits=8)
    options = {"lmbda": 8 * codec.recipe["options"]["lmbda"], "steps": 30, "lr": 1e-3, "batch_size": 4, "crop": 64,
               "val_photos": 1, "val_crops": 4, "eval_every": 10}
    free, held = (finetune_codec(start, photos, CodecFinetuneOptions(**options, hold_rate=hold)).lowbit_info
                  .extra["finetune"]["history"] for hold in (False, True))
    start_bpp = free[0]["bpp"]
    assert held[0]["bpp"] == start_bpp
    assert free[-1]["bpp"] > 1.5 * start_bpp  # on its own loss it moves to the rate of the lambda it is given
    assert abs(held[-1]["bpp"] / start_bpp - 1) < 0.1  # held, lambda falls until the start's rate is back
    assert held[-1]["lmbda"] < options["lmbda"] == free[-1]["lmbda"]


def test_lambda_follows_the_rate_towards_the_starting_models():
    assert next_lambda(0.01, 0.3, 0.2) < 0.01 < next_lambda(0.01, 0.1, 0.2)
    assert next_lambda(0.01, 0.2, 0.2) == 0.01


def test_a_finetuned_codec_saves_and_reloads_exactly(tmp_path):
    tuned = finetune_codec(_quantized(), _photos(), _options(steps=8, eval_every=8))
    path = lowbit.save(tuned, tmp_path / "c.lowbit")
    loaded = lowbit.load(path, model=_codec())
    x = torch.stack(_photos(2, 32)).float() / 255
    assert torch.equal(_x_hat(loaded, x), _x_hat(tuned, x))
    assert loaded.lowbit_record.provenance["finetune"]["objective"] == "rate_distortion"


def test_held_out_photos_are_never_trained_on():
    photos = _photos(5)
    train, held = split_photos(photos, 2, seed=0)
    assert len(train) == 3 and len(held) == 2
    assert not any(any(h is t for t in train) for h in held)


@pytest.mark.parametrize("kw, match", [({"lmbda": 0.0}, "lambda"), ({"lmbda": float("nan")}, "lambda"),
                                       ({"lr": -1.0}, "lr"), ({"steps": 0}, "steps"), ({"crop": 8}, "crop"),
                                       ({"clip_norm": float("inf")}, "clip_norm")])
def test_bad_options_are_refused_in_one_line(kw, match):
    with pytest.raises(LowbitError, match=match):
        _options(**kw)


def test_too_few_photos_or_a_float_codec_are_refused():
    with pytest.raises(LowbitError, match="more than 2 photos"):
        finetune_codec(_quantized(), _photos(2), _options())
    with pytest.raises(LowbitError, match="quantized codec"):
        finetune_codec(_codec(), _photos(), _options())


def test_the_classifier_finetune_points_a_codec_to_its_own():
    with pytest.raises(LowbitError, match="lowbit.codec.finetune_codec"):
        lowbit.finetune(_quantized(), _photos())


def test_gdn_stays_a_valid_normalization():
    tuned = finetune_codec(_quantized(), _photos(), _options())
    gdns = [m for m in tuned.modules() if isinstance(m, QGDN)]
    assert gdns and all(float(m.fake_quant_weight().detach().min()) >= 0 and float(m.bias.detach().min()) >= BETA_MIN
                        for m in gdns)


def test_training_and_held_out_crops_are_the_photos_in_unit_range(monkeypatch):
    photos = _photos()
    seen: list[torch.Tensor] = []

    def recording(output, target, lmbda):
        seen.append(target)
        return rate_distortion_loss(output, target, lmbda)

    monkeypatch.setattr(finetune_module, "rate_distortion_loss", recording)
    finetune_codec(_quantized(), photos, _options(steps=4, eval_every=4))
    expected = float(torch.stack(photos).float().mean()) / 255
    for target in seen:  # each batch's mean brightness is that of the photos, give or take the crop drawn
        assert 0.5 * expected < float(target.mean()) < 1.5 * expected and float(target.max()) <= 1.0
