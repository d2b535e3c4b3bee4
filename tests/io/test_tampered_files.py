"""A ``.lowbit`` file is data from outside: every damaged or edited file must give a one-line ``LowbitError``
or a model whose outputs are identical to the saved one, without allocating what a header asks for."""

import resource

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import lowbit
from lowbit import LowbitError
from lowbit.cli import main
from lowbit.config import Override, QuantConfig
from lowbit.io.lowbit_file import DIGEST_KEY, META_KEY
from lowbit.io.payload import ACT_SCALES, ACT_ZERO_POINTS, file_digest
from lowbit.models import build_model
from lowbit.spec import weight_spec
from conftest import rewrite

INPUT = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A zoo model with 3-bit affine (packed codes and zero points) and 12-bit (int16) layers, and its outputs."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1)
    config = QuantConfig.from_bits(3, 8, calib_images=16, batch_size=16,
                                   overrides=(Override("layer3.*", weights=weight_spec(12)),))
    q = lowbit.quantize(model, torch.randn(16, 1, 28, 28), config)
    path = lowbit.save(q, tmp_path_factory.mktemp("saved") / "m.lowbit")
    with torch.no_grad():
        return path, q(INPUT)


def refused_or_identical(path, reference):
    try:
        model = lowbit.load(path)
    except LowbitError as exc:
        assert "\n" not in str(exc)
        return "refused"
    with torch.no_grad():
        assert torch.equal(model(INPUT), reference), "a damaged file loaded into a different model"
    return "identical"


@FUZZ
@given(data=st.data())
def test_damaged_bytes_are_refused_or_harmless(saved, tmp_path_factory, data):
    path, reference = saved
    raw = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(raw[:8], "little")
    rnd = data.draw(st.randoms(use_true_random=False))  # uniform positions (drawn integers favour small ones)
    for _ in range(data.draw(st.integers(1, 4))):
        i = rnd.randrange(header_end) if data.draw(st.booleans()) else rnd.randrange(header_end, len(raw))
        raw[i] ^= 1 << rnd.randrange(8)
    if data.draw(st.integers(0, 4)) == 0:
        raw = raw[: rnd.randrange(len(raw))]
    damaged = tmp_path_factory.mktemp("bytes") / "m.lowbit"
    damaged.write_bytes(bytes(raw))
    refused_or_identical(damaged, reference)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["fp16", "fx", "swap", "per_channel", "mse", "lowbit"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from _paths(child, prefix + (key,))


@FUZZ
@given(data=st.data())
def test_edited_headers_are_refused_or_harmless(saved, tmp_path_factory, data):
    """Header edits that come with a matching digest are caught by the schema and the layout checks."""
    path, reference = saved
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def edit(header):
        for _ in range(data.draw(st.integers(1, 3))):
            target = data.draw(st.sampled_from(sorted((p for p in _paths(header) if p), key=repr)))
            parent = header
            for key in target[:-1]:
                parent = parent[key]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                del parent[target[-1]]
            else:
                parent[target[-1]] = data.draw(json_values)
        return header

    edited = rewrite(path, tmp_path_factory.mktemp("header") / "m.lowbit", edit_header=edit)
    refused_or_identical(edited, reference)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # KiB: under 1 GB


def _first(tensors, suffix):
    return next(k for k in sorted(tensors) if k.endswith(suffix) and not k.startswith("activations"))


@pytest.mark.parametrize("case", ["weight scale nan", "weight scale zero", "weight scale negative", "activation scale inf",
                                  "activation zero point out of range", "int16 code out of range", "bias nan",
                                  "scale vector shortened"])
def test_impossible_values_are_refused_even_with_a_matching_digest(saved, tmp_path, case):
    def edit(t):
        if case.startswith("weight scale"):
            t[_first(t, ".scale")][0] = {"nan": float("nan"), "zero": 0.0, "negative": -1.0}[case.split()[-1]]
        elif case == "activation scale inf":
            t[ACT_SCALES][0] = float("inf")
        elif case == "activation zero point out of range":
            t[ACT_ZERO_POINTS][0] = 300
        elif case == "int16 code out of range":
            t["layer3.0.conv1.qweight"].view(-1)[0] = 32767
        elif case == "bias nan":
            t[_first(t, ".bias")][0] = float("nan")
        else:
            key = _first(t, ".scale")
            t[key] = t[key][:-1].clone()

    with pytest.raises(LowbitError):
        lowbit.load(rewrite(saved[0], tmp_path / "m.lowbit", edit_tensors=edit))


def _set(path, value):
    def edit(header):
        if not path:
            return value(header)
        node = header
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value(node[path[-1]]) if callable(value) else value
        return header
    return edit


@pytest.mark.parametrize("path,value,message", [
    (("config", "weights", "bits"), 2, "per-layer bits"),
    ((), lambda h: {**h, "config": {**h["config"], "weights": {**h["config"]["weights"], "bits": 2}},
                    "bits": {k: 2 if b == 3 else b for k, b in h["bits"].items()}}, "header implies"),
    (("calibrated_activations",), lambda names: names[::-1], "calibrated activations"),
    (("bits", "conv1"), 8, "per-layer bits"),
    (("arch", "kwargs", "pretrained"), True, "unknown key 'pretrained'"),
    (("arch", "kwargs", "num_classes"), 10**7, "num_classes"),
    (("format_version",), KeyError, "format_version"),
    (("format_version",), "1", "format_version"),
    (("format_version",), 1, "older lowbit"),
    (("config", "weights", "symmetric"), "no", "symmetric"),
    (("provenance", "deep"), [[[[[[[[[[[]]]]]]]]]]], "nested deeper"),
    (("mixed",), {"budget": 3, "sensitivity": "hessian", "compression": 8.0}, r"header\.mixed\.budget"),
    (("mixed",), {"budget": {}, "sensitivity": "hessian", "compression": "8x"}, r"header\.mixed\.compression"),
    (("mixed",), {"budget": {"max_drop": 1}, "sensitivity": "hessian", "compression": 8.0,
                  "search": {"changed_pct": "x", "holdout_images": 5}}, r"header\.mixed\.search\.changed_pct"),
])
def test_edited_header_fields_are_named_in_the_error(saved, tmp_path, path, value, message):
    edited = rewrite(saved[0], tmp_path / "m.lowbit", edit_header=_set(path, value))
    with pytest.raises(LowbitError, match=message):
        lowbit.load(edited)


def test_a_header_asking_for_more_than_the_file_holds_is_refused_before_building_it(saved, tmp_path, monkeypatch):
    edited = rewrite(saved[0], tmp_path / "m.lowbit", edit_header=_set(("arch", "kwargs", "num_classes"), 90_000))
    built_on = []

    def spy(record):
        built_on.append(torch.empty(0).device.type)
        return build_model(**{"name": record["name"], **record["kwargs"]})

    monkeypatch.setattr("lowbit.api.rebuild", spy)
    with pytest.raises(LowbitError, match="header implies"):
        lowbit.load(edited)
    assert built_on == ["meta"]


def _builder_without_meta_kernels(record):
    """A zoo builder that, like older timm's RegNet, runs an op with no meta kernel while it builds."""
    torch.unique(torch.arange(3))
    return build_model(**{"name": record["name"], **record["kwargs"]})


def test_a_builder_that_cannot_run_on_meta_still_loads_and_checks(saved, tmp_path, monkeypatch):
    monkeypatch.setattr("lowbit.api.rebuild", _builder_without_meta_kernels)
    with torch.no_grad():
        assert torch.equal(lowbit.load(saved[0])(INPUT), saved[1])
    edited = rewrite(saved[0], tmp_path / "m.lowbit", edit_header=_set(("arch", "kwargs", "num_classes"), 90_000))
    with pytest.raises(LowbitError, match="header implies"):
        lowbit.load(edited)


def test_header_that_is_not_an_object_or_not_json(saved, tmp_path):
    for header in ("[1, 2]", "{" * 100_000, '{"format": "lowbit"'):
        with safe_open(str(saved[0]), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        save_file(tensors, str(tmp_path / "m.lowbit"), metadata={META_KEY: header, DIGEST_KEY: file_digest(header, tensors)})
        with pytest.raises(LowbitError, match="header"):
            lowbit.load(tmp_path / "m.lowbit")


def test_info_refuses_an_edited_file_instead_of_printing_it(saved, tmp_path, capsys):
    edited = tmp_path / "m.lowbit"
    raw = saved[0].read_bytes()
    version = f'\\"lowbit_version\\":\\"{lowbit.__version__}\\"'.encode()  # JSON text inside the JSON header
    assert version in raw
    edited.write_bytes(raw.replace(version, version.replace(lowbit.__version__.encode(), b"9.9.9")))
    code = main(["info", str(edited)])
    captured = capsys.readouterr()
    assert code == 2 and "integrity" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "9.9.9" not in captured.out
