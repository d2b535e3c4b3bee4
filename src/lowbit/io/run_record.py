"""``RunRecord``: the typed record of one quantization run, the header of a ``.lowbit`` file.

It is written in one place (:func:`lowbit.io.lowbit_file.save`) and read back through :meth:`RunRecord.from_dict`,
which checks every key, type and range before any of it is used: a header is data from outside, and numbers in
it (class counts, bit widths) decide what gets allocated. The architecture record holds only what the zoo
itself writes (name, class count, input channels, image size), so a file cannot ask for a download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from lowbit.config import QuantConfig
from lowbit.coverage import Coverage
from lowbit.graph import QuantInfo
from lowbit.io import schema as s
from lowbit.mixed.budget import TARGETS as BUDGET_TARGETS
from lowbit.spec import MAX_BITS, MIN_BITS, OBSERVERS, Bits
from lowbit.version import __version__

FORMAT = "lowbit"
FORMAT_VERSION = 2
METRIC_KEYS = ("top1", "top5", "precision", "recall", "f1")
MAX_CLASSES, MAX_CHANNELS, MAX_IMAGE_SIZE = 100_000, 64, 4096
CODEC_TASK, MAX_CODEC_CHANNELS = "image-codec", 512  # bounds what a header can make the loader build
SPEC_KEYS = ("bits", "symmetric", "granularity", "axis", "observer", "dynamic", "percentile")
CONFIG_KEYS = ("version", "weights", "activations", "overrides", "method", "method_options", "calib_images",
               "batch_size", "seed", "bias_correction")
# What the CLI and the algorithms add beside the config: typed fields, everything else is shown as provenance.
TYPED_EXTRAS = ("dataset", "float_metrics", "quant_metrics", "mixed", "coverage")


@dataclass(frozen=True)
class ArchRecord:
    """How to rebuild a zoo architecture (random weights): exactly the arguments the zoo records."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": {"num_classes": self.num_classes, "in_channels": self.in_channels,
                                              "image_size": self.image_size}}

    @classmethod
    def from_dict(cls, d: Any, where: str = "arch") -> "ArchRecord":
        d = s.obj(d, where, ("name", "kwargs"))
        kw = s.obj(d["kwargs"], f"{where}.kwargs", ("num_classes", "in_channels", "image_size"))
        return cls(s.text(d["name"], f"{where}.name", max_len=100),
                   s.integer(kw["num_classes"], f"{where}.num_classes", 1, MAX_CLASSES),
                   s.integer(kw["in_channels"], f"{where}.in_channels", 1, MAX_CHANNELS),
                   s.optional(kw["image_size"], s.integer, f"{where}.image_size", 1, MAX_IMAGE_SIZE))


@dataclass(frozen=True)
class CodecArchRecord:
    """How to rebuild a registered codec architecture: its name and channel counts."""

    name: str
    n: int
    m: int

    def to_dict(self) -> dict[str, Any]:
        return {"task": CODEC_TASK, "name": self.name, "kwargs": {"N": self.n, "M": self.m}}

    @classmethod
    def from_dict(cls, d: Any, where: str = "arch") -> "CodecArchRecord":
        d = s.obj(d, where, ("task", "name", "kwargs"))
        kw = s.obj(d["kwargs"], f"{where}.kwargs", ("N", "M"))
        return cls(s.text(d["name"], f"{where}.name", max_len=100), s.integer(kw["N"], f"{where}.N", 1, MAX_CODEC_CHANNELS),
                   s.integer(kw["M"], f"{where}.M", 1, MAX_CODEC_CHANNELS))


def arch_record(d: Any, where: str = "arch") -> ArchRecord | CodecArchRecord:
    """A classifier's or a codec's architecture record (a codec's names its task)."""
    if isinstance(d, dict) and d.get("task") == CODEC_TASK:
        return CodecArchRecord.from_dict(d, where)
    return ArchRecord.from_dict(d, where)


@dataclass(frozen=True)
class RunRecord:
    """Config, per-layer bits, allocation, metrics and provenance of a quantized model."""

    config: QuantConfig
    mode: str
    bits: Mapping[str, Bits]
    calibrated_activations: tuple[str, ...] = ()
    arch: ArchRecord | CodecArchRecord | None = None
    dataset: Mapping[str, Any] | None = None
    float_metrics: Mapping[str, float] | None = None
    quant_metrics: Mapping[str, float] | None = None
    mixed: Mapping[str, Any] | None = None
    coverage: Coverage | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    lowbit_version: str = __version__

    @classmethod
    def of(cls, info: QuantInfo, bits: Mapping[str, Bits], calibrated: list[str],
           extra: Mapping[str, Any] | None = None) -> "RunRecord":
        """The record of a prepared model, with what the caller measured (dataset, metrics) in ``extra``."""
        extra = {**info.extra, **(extra or {})}
        typed = {k: extra.pop(k) for k in TYPED_EXTRAS if k in extra}
        for key in ("float_metrics", "quant_metrics"):
            if typed.get(key) is not None:
                typed[key] = {k: typed[key][k] for k in (*METRIC_KEYS, "n")}
        arch = arch_record(info.arch) if info.arch else None
        return cls(info.config, info.mode, dict(bits), tuple(calibrated), arch, provenance=extra, **typed)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "lowbit_version": self.lowbit_version,
                "config": self.config.to_dict(), "mode": self.mode, "arch": self.arch.to_dict() if self.arch else None,
                "bits": dict(self.bits), "calibrated_activations": list(self.calibrated_activations),
                "dataset": self.dataset, "float_metrics": self.float_metrics, "quant_metrics": self.quant_metrics,
                "mixed": self.mixed, "coverage": self.coverage.to_dict() if self.coverage else None,
                "provenance": dict(self.provenance)}

    @classmethod
    def from_dict(cls, d: Any) -> "RunRecord":
        """A validated record; raises ``SchemaError`` (a ``LowbitError``) naming the first wrong entry."""
        d = s.mapping(d, "header")
        if d.get("format") != FORMAT:
            raise s.fail("header.format", f"expected {FORMAT!r}, found {d.get('format')!r}")
        version = s.integer(d.get("format_version"), "header.format_version", 1, 2**31)
        if version != FORMAT_VERSION:
            newer = "a newer lowbit; upgrade lowbit" if version > FORMAT_VERSION else "an older lowbit; quantize again"
            raise s.fail("header.format_version", f"format {version} was written by {newer}")
        d = s.obj(d, "header", ("format", "format_version", "lowbit_version", "config", "mode", "arch", "bits",
                                "calibrated_activations", *TYPED_EXTRAS, "provenance"))
        return cls(config=_config(d["config"]), mode=s.text(d["mode"], "header.mode", ("fx", "parts", "swap")),
                   bits={s.text(k, "header.bits", max_len=s.MAX_TEXT): _bits(v, f"header.bits.{k}")
                         for k, v in s.mapping(d["bits"], "header.bits").items()},
                   calibrated_activations=tuple(s.text(n, "header.calibrated_activations")
                                                for n in s.array(d["calibrated_activations"], "header.calibrated_activations")),
                   arch=s.optional(d["arch"], arch_record, "header.arch"),
                   dataset=s.optional(d["dataset"], _dataset, "header.dataset"),
                   float_metrics=s.optional(d["float_metrics"], _metrics, "header.float_metrics"),
                   quant_metrics=s.optional(d["quant_metrics"], _metrics, "header.quant_metrics"),
                   mixed=s.optional(d["mixed"], _mixed, "header.mixed"),
                   coverage=s.optional(d["coverage"], _coverage, "header.coverage"),
                   provenance=s.mapping(s.plain_json(d["provenance"], "header.provenance"), "header.provenance"),
                   lowbit_version=s.text(d["lowbit_version"], "header.lowbit_version", max_len=40))


def _bits(value: Any, where: str) -> Bits:
    return "fp16" if value == "fp16" else s.integer(value, where, MIN_BITS, MAX_BITS)


def _spec(d: Any, where: str) -> dict[str, Any]:
    d = s.obj(d, where, SPEC_KEYS)
    _bits(d["bits"], f"{where}.bits")
    s.boolean(d["symmetric"], f"{where}.symmetric")
    s.text(d["granularity"], f"{where}.granularity", ("per_tensor", "per_channel"))
    s.integer(d["axis"], f"{where}.axis", -8, 7)
    s.text(d["observer"], f"{where}.observer", OBSERVERS)
    s.boolean(d["dynamic"], f"{where}.dynamic")
    s.number(d["percentile"], f"{where}.percentile", 50.0, 100.0)
    return d


def _config(d: Any) -> QuantConfig:
    where = "header.config"
    d = s.obj(d, where, CONFIG_KEYS, ("gain_correction", "equalize", "float_residual_stream"))
    s.integer(d["version"], f"{where}.version", 1, 2**31)
    _spec(d["weights"], f"{where}.weights")
    s.optional(d["activations"], _spec, f"{where}.activations")
    for i, o in enumerate(s.array(d["overrides"], f"{where}.overrides")):
        o = s.obj(o, f"{where}.overrides[{i}]", ("pattern", "weights", "activations"), ("keep_float",))
        s.boolean(o.get("keep_float", False), f"{where}.overrides[{i}].keep_float")
        s.text(o["pattern"], f"{where}.overrides[{i}].pattern")
        s.optional(o["weights"], _spec, f"{where}.overrides[{i}].weights")
        s.optional(o["activations"], _spec, f"{where}.overrides[{i}].activations")
    s.text(d["method"], f"{where}.method", max_len=100)
    s.mapping(s.plain_json(d["method_options"], f"{where}.method_options"), f"{where}.method_options")
    s.integer(d["calib_images"], f"{where}.calib_images", 1, 2**31)
    s.integer(d["batch_size"], f"{where}.batch_size", 1, 2**31)
    s.integer(d["seed"], f"{where}.seed", -(2**63), 2**64 - 1)
    s.boolean(d["bias_correction"], f"{where}.bias_correction")
    s.boolean(d.get("gain_correction", False), f"{where}.gain_correction")
    s.optional(d.get("equalize"), s.boolean, f"{where}.equalize")
    s.boolean(d.get("float_residual_stream", False), f"{where}.float_residual_stream")
    return QuantConfig.from_dict(d)


def _mixed(d: Any, where: str) -> dict[str, Any]:
    """The mixed-precision record: any plain JSON, with the figures ``lowbit info`` shows typed and in range."""
    d = s.mapping(s.plain_json(d, where), where)
    budget = s.mapping(d.get("budget"), f"{where}.budget")
    for key in (*BUDGET_TARGETS, "max_drop"):
        s.optional(budget.get(key), s.number, f"{where}.budget.{key}", 0.0, 1e12)
    s.text(d.get("sensitivity"), f"{where}.sensitivity", max_len=100)
    s.number(d.get("compression"), f"{where}.compression", 1e-12, 1e12)
    s.optional(d.get("total_compression"), s.number, f"{where}.total_compression", 0.0, 1e12)
    if "search" in d:
        search = s.mapping(d["search"], f"{where}.search")
        s.number(search.get("changed_pct"), f"{where}.search.changed_pct", 0.0, 100.0)
        s.integer(search.get("holdout_images"), f"{where}.search.holdout_images", 1, 2**40)
        s.integer(search.get("float_activations", 0), f"{where}.search.float_activations", 0, 2**40)
    return d


def _dataset(d: Any, where: str) -> dict[str, Any]:
    d = s.obj(d, where, ("name", "input_shape"))
    shape = s.array(d["input_shape"], f"{where}.input_shape", max_len=4)
    return {"name": s.text(d["name"], f"{where}.name", max_len=100),
            "input_shape": [s.integer(n, f"{where}.input_shape", 1, MAX_IMAGE_SIZE) for n in shape]}


def _metrics(d: Any, where: str) -> dict[str, float]:
    d = s.obj(d, where, (*METRIC_KEYS, "n"))
    out: dict[str, Any] = {k: s.optional(d[k], s.number, f"{where}.{k}", 0.0, 1.0) for k in METRIC_KEYS}
    out["n"] = s.integer(d["n"], f"{where}.n", 0, 2**40)
    return out


def _coverage(d: Any, where: str) -> Coverage:
    d = s.obj(d, where, ("total", "float_params", "unquantized"))
    total = s.integer(d["total"], f"{where}.total", 0, 2**48)
    kinds = s.mapping(d["unquantized"], f"{where}.unquantized", max_len=1000)
    return Coverage(total, s.integer(d["float_params"], f"{where}.float_params", 0, total),
                    {s.text(k, f"{where}.unquantized", max_len=200): s.integer(v, f"{where}.unquantized.{k}", 0, total)
                     for k, v in kinds.items()})
