"""Atomic file writes: every file lowbit writes appears whole or not at all (errors, Ctrl-C and SIGTERM included).

A write goes to a hidden temporary file beside the target, ``.NAME.<pid>.<random>.part``, which is renamed onto
the target once complete. Only ``SIGKILL`` (or a power cut) can leave such a file behind; the next write to the
same target sweeps it (see :func:`sweep_stale_parts`).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lowbit.errors import LowbitError

#: A temporary file untouched for this long is abandoned whoever wrote it: lowbit writes each file in one go,
#: so a live writer keeps its temporary file's modification time fresh.
STALE_AFTER_S = 3600.0

_recorders: list[list[Path]] = []


class Terminated(SystemExit):
    """SIGTERM turned into an exception, so that ``finally`` blocks and context managers clean up.

    It is a ``SystemExit`` with the shell's status for SIGTERM (128 + 15): left uncaught it ends the program
    silently, as the signal would have, and ``except Exception`` clauses do not swallow it.
    """

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` instead of killing the process outright.

    The handler is installed only where the default action (sudden death) is in force and only from the main
    thread, where Python runs signal handlers; a handler the application installed itself is left alone, and
    the previous handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def recording_writes() -> Iterator[list[Path]]:
    """Collect the targets that :func:`atomic_path` completes within the block (to report them after an interrupt).

    A target is recorded exactly when it has been replaced: the record is taken after the rename, even if an
    interrupt arrives right after it.
    """
    written: list[Path] = []
    _recorders.append(written)
    try:
        yield written
    finally:
        _recorders.remove(written)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words for messages ("a folder", "a named pipe"...)."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a link")):
        if test(mode):
            return name
    return "a special file"


def _existing_mode(path: Path) -> int | None:
    """Permission bits of an existing regular file at ``path`` (None when there is none).

    Anything else that exists there is refused: replacing a device node, pipe or folder with a regular file
    would break whatever relied on it.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise LowbitError(f"{path} is {file_kind(st.st_mode)}, not a regular file; write to a file path instead")
    return stat.S_IMODE(st.st_mode) & 0o777


def _writer_gone(part: str, prefix: str) -> bool:
    """Whether the process that made temporary file ``part`` has ended (judged on POSIX systems only)."""
    match = re.fullmatch(re.escape(prefix) + r"(\d+)\.[a-z0-9_]{8}\.part", part)
    if os.name != "posix" or match is None or int(match.group(1)) <= 0:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. it runs under another user: alive
        return False
    return False


def sweep_stale_parts(path: str | Path) -> list[Path]:
    """Remove abandoned temporary files of earlier writes to ``path``; returns those removed.

    A ``.NAME.*.part`` file is abandoned when its writer, named by the pid in the file name, no longer runs, or
    when it has not been modified for :data:`STALE_AFTER_S`. The pid rule clears what a killed run left at once;
    the age rule covers what the pid cannot decide: files written from another machine on a shared folder,
    pids reused since, and older name formats. A live writer never loses its file: its pid runs, and it
    is writing the file, so the file is recent. Errors are ignored; sweeping is best effort.
    """
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".part")):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S or _writer_gone(entry.name, prefix):
                os.remove(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it is renamed onto ``path`` if the block succeeds, else removed.

    The parent folder is created. A replaced file keeps its permissions (an owner-only file stays owner-only);
    a new one gets the usual ``0666`` less the umask rather than the owner-only mode of a temporary file. A
    symbolic link is followed, so that the file it points to is replaced rather than the link. ``path`` must
    not be a folder, device or pipe. SIGTERM during the block removes the temporary file and raises
    :class:`Terminated` (see :func:`sigterm_as_exception`).
    """
    target = Path(path)
    real = Path(os.path.realpath(target))
    mode = _existing_mode(real)
    with _write_errors(target):
        real.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_parts(real)
    with sigterm_as_exception():
        tmp, renaming = None, False
        try:
            with _write_errors(target):
                fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.{os.getpid()}.", suffix=".part")
                os.close(fd)
                yield Path(tmp)
                os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
                renaming = True
                os.replace(tmp, real)
        finally:
            _finish(tmp, renaming, target)


# a disk that is full, read-only or not ours: the user's to fix, said in one line
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


@contextmanager
def _write_errors(target: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        raise LowbitError(f"cannot write {target}: {exc.strerror or exc}; free some space, or write somewhere "
                          "writable") from None


def _finish(tmp: str | None, renaming: bool, target: Path) -> None:
    """Remove the temporary file if it was not renamed; else record ``target`` as written.

    Whether the rename happened is read from the disk, not from the code's progress, so an interrupt raised
    just after ``os.replace`` returned still counts the file as written.
    """
    if tmp is None:
        return
    if os.path.exists(tmp):
        os.remove(tmp)
    elif renaming:
        for written in _recorders:
            written.append(target)
