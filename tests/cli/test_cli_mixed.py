"""``lowbit mixed`` and ``lowbit quantize --mixed-precision`` on the bundled ResNet-20."""

import csv
import json

from lowbit.cli import main
from lowbit.io.lowbit_file import read_metadata

from test_cli_quantize import short_fashion_mnist  # noqa: F401 (autouse: the runs here read the short copy)


def test_mixed_writes_model_allocation_table_and_chart(tmp_path, capsys):
    out, report = tmp_path / "m.lowbit", tmp_path / "m.json"
    code = main(["mixed", "--weights-cr", "8", "--first-last-bits", "8", "--calib-images", "128",
                 "--sensitivity-images", "64", "--out", str(out), "--json", str(report), "--quiet"])
    text = capsys.readouterr().out
    assert code == 0
    assert "weight bits" in text and "8.0" in text and "smaller" in text
    rows = list(csv.DictReader((tmp_path / "m.allocation.csv").read_text().splitlines()))
    assert len(rows) == 22 and rows[0]["pinned"] == "yes" and rows[-1]["weight bits"] == "8"
    png = (tmp_path / "m.allocation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    meta = read_metadata(out)
    assert meta["mixed"]["compression"] >= 8
    assert {int(r["weight bits"]) for r in rows} == set(meta["bits"].values())
    result = json.loads(report.read_text())
    assert result["quant_metrics"]["top1"] > result["float_metrics"]["top1"] - 0.01


def test_quantize_mixed_precision_flag_with_bops_and_orthogonality(tmp_path):
    out = tmp_path / "o.lowbit"
    assert main(["quantize", "--mixed-precision", "--gbops", "0.9", "--activation-candidates", "4,8",
                 "--sensitivity", "orthogonality", "--calib-images", "64", "--sensitivity-images", "64",
                 "--no-eval", "--out", str(out), "--quiet"]) == 0
    mixed = read_metadata(out)["mixed"]
    assert mixed["bops"] <= 0.9e9 and mixed["sensitivity"] == "orthogonality"


def test_codes_only_size_measure(tmp_path, capsys):
    out = tmp_path / "c.lowbit"
    assert main(["mixed", "--weights-cr", "14", "--size-measure", "codes", "--sensitivity", "orthogonality",
                 "--calib-images", "64", "--sensitivity-images", "64", "--no-eval", "--out", str(out)]) == 0
    assert "weights (codes only)" in capsys.readouterr().out
    mixed = read_metadata(out)["mixed"]
    assert mixed["budget"]["size_measure"] == "codes" and mixed["compression"] >= 14
    assert mixed["weight_bytes"] == sum(-(-r["params"] * r["weight_bits"] // 8) for r in mixed["layers"])


def test_mixed_errors_exit_2(tmp_path, capsys):
    out = tmp_path / "e.lowbit"
    assert main(["mixed", "--out", str(out), "--no-eval", "--quiet"]) == 2
    assert "needs a budget" in capsys.readouterr().err
    assert main(["mixed", "--weights-cr", "40", "--calib-images", "64", "--out", str(out), "--no-eval",
                 "--quiet"]) == 2
    assert "infeasible" in capsys.readouterr().err
    assert main(["quantize", "--weights-cr", "8", "--out", str(out), "--no-eval", "--quiet"]) == 2
    assert "--mixed-precision" in capsys.readouterr().err
    assert main(["mixed", "--weights-cr", "8", "--bits", "2,x", "--out", str(out), "--quiet"]) == 2
    assert not out.exists() and not list(tmp_path.iterdir())


def test_total_memory_budget_from_the_cli(tmp_path, capsys):
    """--total-cr mixes the activation widths from --bits and reports the total it met."""
    out = tmp_path / "t.lowbit"
    assert main(["mixed", "--total-cr", "8", "--sensitivity", "orthogonality", "--calib-images", "64",
                 "--sensitivity-images", "32", "--no-eval", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "largest activation" in text and "total memory" in text
    mixed = read_metadata(out)["mixed"]
    assert mixed["total_compression"] >= 8 and mixed["budget"]["activation_bits"] == [2, 4, 8]
    total = (mixed["float_bytes"] + mixed["float_activation_bytes"]) / (mixed["weight_bytes"] + mixed["activation_bytes"])
    assert 0 < mixed["activation_bytes"] < mixed["float_activation_bytes"] and mixed["total_compression"] == total
    assert main(["mixed", "--total-cr", "40", "--calib-images", "64", "--sensitivity-images", "32", "--no-eval",
                 "--out", str(tmp_path / "x.lowbit"), "--quiet"]) == 2
    assert "infeasible" in capsys.readouterr().err


def test_max_drop_finds_a_model_and_prints_the_candidates_it_tried(tmp_path, capsys):
    out = tmp_path / "d.lowbit"
    assert main(["mixed", "--max-drop", "1", "--holdout-images", "128", "--calib-images", "64",
                 "--sensitivity-images", "64", "--no-eval", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "held-out classes changed %" in text and "<- kept" in text and "128 training images set aside" in text
    mixed = read_metadata(out)["mixed"]
    assert mixed["budget"]["max_drop"] == 1 and mixed["search"]["changed_pct"] <= 1
    assert len(mixed["search"]["probes"]) >= 2
    assert main(["info", str(out)]) == 0
    assert f"max_drop=1 ({mixed['search']['changed_pct']:.2f}% of 128 held-out classes changed" in capsys.readouterr().out


def test_max_drop_with_a_size_target_exits_2(tmp_path, capsys):
    out = tmp_path / "d.lowbit"
    assert main(["mixed", "--max-drop", "1", "--weights-cr", "8", "--out", str(out), "--no-eval", "--quiet"]) == 2
    assert "--max-drop chooses the size itself; drop --weights-cr" in capsys.readouterr().err
    assert main(["mixed", "--max-drop", "1", "--activation-candidates", "4,8", "--out", str(out), "--no-eval"]) == 2
    assert "drop --activation-candidates" in capsys.readouterr().err
    assert main(["mixed", "--max-drop", "1", "--holdout-images", "99999", "--calib-images", "64", "--out", str(out),
                 "--no-eval", "--quiet"]) == 2
    assert "held-out images beyond the 64 calibration images" in capsys.readouterr().err
    assert not out.exists()
