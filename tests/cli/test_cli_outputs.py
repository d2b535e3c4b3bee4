"""Outputs that would destroy an input, each other, or a special file are refused before any work; interrupts
are reported truthfully and leave no temporary files."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

import lowbit.cli.quantize
import lowbit.cli.synth
from lowbit.cli import main
from lowbit.io.atomic import atomic_path

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals, device nodes and fifos")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def assert_refused(code, err, *words):
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err


@pytest.fixture(autouse=True)
def work_must_not_start(monkeypatch):
    """Fail, without writing anything, if a command gets past its output check (a missed clash would otherwise
    run for minutes and then replace a checkpoint, or even /dev/null)."""
    def started(*args, **kwargs):
        raise AssertionError("the command started its work despite a clashing output")
    monkeypatch.setattr(lowbit.cli.quantize, "quantize_and_report", started)
    monkeypatch.setattr(lowbit.cli.synth, "synthesize", started)


@pytest.fixture
def model_file(tmp_path):
    """Stands in for a .lowbit file: the refusals come before anything reads it."""
    path = tmp_path / "m.lowbit"
    path.write_bytes(b"model bytes")
    return path


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "float.safetensors"
    path.write_bytes(b"float weights")
    return path


def test_json_equal_to_out(capsys, tmp_path):
    out = tmp_path / "q.lowbit"
    code, err = run(capsys, "quantize", "--out", out, "--json", out)
    assert_refused(code, err, "--out", "--json")
    assert list(tmp_path.iterdir()) == []


def test_eval_json_equal_to_the_evaluated_file(capsys, model_file):
    code, err = run(capsys, "eval", model_file, "--json", model_file)
    assert_refused(code, err, "--json", "input")
    assert model_file.read_bytes() == b"model bytes"


@posix_only
def test_eval_json_a_hard_link_of_the_evaluated_file(capsys, tmp_path, model_file):
    link = tmp_path / "other-name.json"
    os.link(model_file, link)
    code, err = run(capsys, "eval", model_file, "--json", link)
    assert_refused(code, err, "--json", "input")
    assert model_file.read_bytes() == b"model bytes"


def test_out_equal_to_checkpoint(capsys, checkpoint):
    code, err = run(capsys, "quantize", "--checkpoint", checkpoint, "--out", checkpoint)
    assert_refused(code, err, "--out", "--checkpoint")
    assert checkpoint.read_bytes() == b"float weights"


def test_json_equal_to_checkpoint_through_a_relative_path(capsys, checkpoint, monkeypatch):
    monkeypatch.chdir(checkpoint.parent)
    code, err = run(capsys, "quantize", "--checkpoint", checkpoint, "--json", f"./{checkpoint.name}")
    assert_refused(code, err, "--json", "--checkpoint")
    assert checkpoint.read_bytes() == b"float weights"


@posix_only
@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_out_device_node(capsys):
    code, err = run(capsys, "quantize", "--out", "/dev/null")
    assert_refused(code, err, "--out", "/dev/null", "not a regular file")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@posix_only
def test_out_fifo(capsys, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code, err = run(capsys, "quantize", "--out", fifo)
    assert_refused(code, err, "--out", "named pipe")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_out_directory(capsys, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    code, err = run(capsys, "quantize", "--out", folder)
    assert_refused(code, err, "--out", "folder")
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_json_equal_to_an_allocation_file(capsys, tmp_path):
    code, err = run(capsys, "mixed", "--weights-cr", "8", "--out", tmp_path / "q.lowbit",
                    "--json", tmp_path / "q.allocation.csv")
    assert_refused(code, err, "--json", "allocation")


def test_export_out_equal_to_its_input(capsys, model_file):
    code, err = run(capsys, "export", model_file, "--out", model_file)
    assert_refused(code, err, "--out", "input")
    assert model_file.read_bytes() == b"model bytes"


def test_synth_out_is_a_file(capsys, model_file):
    code, err = run(capsys, "synth", "--out", model_file)
    assert_refused(code, err, "--out", "not a folder")
    assert model_file.read_bytes() == b"model bytes"


def test_demo_json_equal_to_a_default_model_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, "demo", "--json", "resnet20_w4a8.lowbit")
    assert_refused(code, err, "--json", "resnet20_w4a8.lowbit")
    assert list(tmp_path.iterdir()) == []


def fake_run(interrupt_after_write: bool):
    """A stand-in for the quantize job that writes --out and is interrupted before or after that."""
    def job(args, config):
        if not interrupt_after_write:
            raise KeyboardInterrupt
        with atomic_path(args.out) as tmp:
            tmp.write_text("model")
        raise KeyboardInterrupt
    return job


def test_interrupt_after_writing_names_the_written_file(capsys, tmp_path, monkeypatch):
    out = tmp_path / "q.lowbit"
    monkeypatch.setattr(lowbit.cli.quantize, "quantize_and_report", fake_run(interrupt_after_write=True))
    code, err = run(capsys, "quantize", "--out", out)
    assert code == 130 and len(err.splitlines()) == 1, err
    assert f"interrupted after writing {out}" in err, err
    assert out.read_text() == "model"


def test_interrupt_before_writing_says_nothing_was_written(capsys, tmp_path, monkeypatch):
    out = tmp_path / "q.lowbit"
    monkeypatch.setattr(lowbit.cli.quantize, "quantize_and_report", fake_run(interrupt_after_write=False))
    code, err = run(capsys, "quantize", "--out", out)
    assert code == 130 and len(err.splitlines()) == 1, err
    assert "interrupted" in err and "no output file was written" in err, err
    assert list(tmp_path.iterdir()) == []


SIGTERM_RUN = textwrap.dedent("""
    import os, signal, sys, tempfile
    import lowbit.cli.quantize
    from lowbit.cli import main
    from lowbit.io.atomic import atomic_path

    def job(args, config):
        with tempfile.TemporaryDirectory(dir=sys.argv[2]) as scratch:
            with open(os.path.join(scratch, "float.safetensors"), "wb") as f:
                f.write(b"x" * 1000)
            with atomic_path(args.out) as tmp:
                tmp.write_bytes(b"y" * 1_000_000)
                os.kill(os.getpid(), signal.SIGTERM)
                tmp.write_bytes(b"never")
        print("not reached")

    lowbit.cli.quantize.quantize_and_report = job
    sys.exit(main(["quantize", "--out", sys.argv[1]]))
""")


@posix_only
def test_sigterm_exits_143_and_leaves_no_temporary_files(tmp_path):
    out, scratch = tmp_path / "out" / "q.lowbit", tmp_path / "scratch"
    out.parent.mkdir()
    scratch.mkdir()
    proc = subprocess.run([sys.executable, "-c", SIGTERM_RUN, str(out), str(scratch)], check=False,
                          capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert len(err.splitlines()) == 1 and "terminated" in err and "no output file was written" in err, err
    assert list(out.parent.iterdir()) == [] and list(scratch.iterdir()) == []
