"""Atomic writes: permissions of a replaced file, SIGTERM, abandoned temporary files, links and special files."""

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from lowbit.errors import LowbitError
from lowbit.io.atomic import STALE_AFTER_S, atomic_path, recording_writes

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals, modes and fifos")


def parts(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@posix_only
def test_replaced_file_keeps_its_mode(tmp_path, umask_022):
    target = tmp_path / "secret.lowbit"
    target.write_text("old")
    target.chmod(0o600)
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@posix_only
def test_new_file_gets_umask_mode(tmp_path, umask_022):
    target = tmp_path / "new.lowbit"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "m.lowbit"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and parts(tmp_path) == []


SIGTERM_WRITER = textwrap.dedent("""
    import os, signal, sys
    from lowbit.io.atomic import atomic_path

    with atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"x" * 1_000_000)
            f.flush()
            os.kill(os.getpid(), signal.SIGTERM)
            f.write(b"never")
    print("not reached")
""")


@posix_only
def test_sigterm_mid_write_removes_the_temporary_file(tmp_path):
    target = tmp_path / "m.lowbit"
    target.write_text("old")
    proc = subprocess.run([sys.executable, "-c", SIGTERM_WRITER, str(target)], check=False, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "not reached" not in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    assert parts(tmp_path) == [] and target.read_text() == "old"


@posix_only
def test_sigterm_handler_is_restored(tmp_path):
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("something else handles SIGTERM in this process")
    with atomic_path(tmp_path / "a.txt") as tmp:
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
        tmp.write_text("a")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def finished_pid() -> int:
    """The pid of a process that has ended (its writer is gone)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True,
                          text=True)
    return int(proc.stdout)


@posix_only
def test_stale_temporary_files_are_swept(tmp_path):
    target = tmp_path / "m.lowbit"
    dead = tmp_path / f".m.lowbit.{finished_pid()}.abcd1234.part"  # its writer was killed
    old = tmp_path / ".m.lowbit.zz9_ab12.part"  # no pid in the name, untouched for long
    live = tmp_path / f".m.lowbit.{os.getpid()}.efgh5678.part"  # a writer that still runs
    other = tmp_path / f".n.lowbit.{finished_pid()}.abcd1234.part"  # another target's
    for p in (dead, old, live, other):
        p.write_bytes(b"x" * 100)
    stale = time.time() - 2 * STALE_AFTER_S
    os.utime(old, (stale, stale))
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert parts(tmp_path) == sorted([live.name, other.name])


@posix_only
def test_link_is_followed_not_replaced(tmp_path):
    real = tmp_path / "real.lowbit"
    real.write_text("old")
    link = tmp_path / "link.lowbit"
    link.symlink_to(real)
    with atomic_path(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and real.read_text() == "new"


@posix_only
def test_fifo_is_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(LowbitError, match="named pipe"), atomic_path(fifo) as tmp:
        tmp.write_text("new")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and parts(tmp_path) == []


def test_completed_writes_are_recorded(tmp_path):
    with recording_writes() as written:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("a")
        with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.txt") as tmp:
            raise RuntimeError("not written")
    assert written == [tmp_path / "a.txt"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(tmp_path, code):
    target = tmp_path / "out.lowbit"
    with pytest.raises(LowbitError, match="cannot write .*out.lowbit"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(code, os.strerror(code))  # what the next write on a full or read-only disk raises
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_disk_through_the_command_line(tmp_path, monkeypatch, capsys):
    from lowbit.cli import main

    def refuse(*_args, **_kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("lowbit.io.atomic.tempfile.mkstemp", refuse)
    assert main(["quantize", "--model", "resnet20", "--calib-images", "8", "--no-eval", "--quiet",
                 "--out", str(tmp_path / "m.lowbit")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lowbit: error: cannot write") and "\n" not in err and "Read-only" in err
