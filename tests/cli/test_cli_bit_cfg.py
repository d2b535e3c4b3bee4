"""OMPQ's knobs from the command line: ``--beta`` for the orthogonality metric, ``bit_cfg`` printed and taken back."""

import json
import re

import pytest

from lowbit.cli import main
from lowbit.io.lowbit_file import read_record

from test_cli_quantize import short_fashion_mnist  # noqa: F401 (autouse: the runs here read the short copy)

FAST = ["--calib-images", "64", "--no-eval", "--quiet"]


def test_the_printed_bit_cfg_quantizes_the_same_layers_at_the_same_widths(tmp_path, capsys):
    mixed_out, again = tmp_path / "m.lowbit", tmp_path / "again.lowbit"
    assert main(["mixed", "--sensitivity", "orthogonality", "--beta", "2", "--weights-cr", "7",
                 "--sensitivity-images", "32", "--out", str(mixed_out), *FAST]) == 0
    printed = re.search(r"bit_cfg: (\[[\d, ]+\])", capsys.readouterr().out).group(1)
    record = read_record(mixed_out)
    assert record.mixed["sensitivity_options"] == {"beta": 2.0} and len(set(json.loads(printed))) > 1
    assert main(["quantize", "--bit-cfg", printed, "--out", str(again), *FAST]) == 0
    assert dict(read_record(again).bits) == dict(record.bits)


@pytest.mark.parametrize("argv,pattern", [
    (["mixed", "--sensitivity", "hessian", "--beta", "2", "--weights-cr", "8"], "--beta applies to"),
    (["quantize", "--bit-cfg", "[8,4]"], "has 2 widths but the model has 22"),
    (["quantize", "--bit-cfg", "[8,4,x]"], "bad --bit-cfg"),
    (["quantize", "--bit-cfg", "[" + ",".join(["1"] * 22) + "]"], "--bit-cfg entry must be"),
    (["quantize", "--mixed-precision", "--weights-cr", "8", "--bit-cfg", "[8]"], "fixes every layer's width"),
])
def test_bad_ompq_options_are_one_line_errors(tmp_path, capsys, argv, pattern):
    assert main([*argv, "--out", str(tmp_path / "x.lowbit"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert pattern in err and len(err.splitlines()) == 1
