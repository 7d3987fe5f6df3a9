"""One writer per output folder: a lock file beside ``--out`` that a second run of a command finds and names.

Why a lock and not only the temporary-folder-and-rename: two ``synth prepare`` runs on one ``--out`` would
each finish their own folder and both report success, with one run's data silently left. The lock is an
``fcntl.flock`` on ``.<out>.lock`` holding the writer's pid: the kernel drops it when the process dies (even
by ``kill -9``), so a stale lock file of a dead run is simply taken over; the pid is only there to name the
other writer in the error. On a file system without ``flock`` the pid itself decides (alive = held).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from synth.errors import UserError
from synth.io import current_umask
from synth.output_folder import pid_alive


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def writer_lock(out: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold the lock of ``out`` for the block; another holder is one ``UserError`` naming its pid.

    ``command`` names the writer in the message (e.g. ``synth prepare``).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(out)
    fd = _acquire(path, out, command)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # before closing: whoever opens it next makes a new file, checked by inode below
        os.close(fd)


def _acquire(path: Path, out: Path, command: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _refuse(out, command, _pid_in(fd), fd)
        except OSError as err:  # no flock here (some network file systems): the pid decides
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            holder = _pid_in(fd)
            if holder is not None and holder != os.getpid() and pid_alive(holder):
                _refuse(out, command, holder, fd)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file as we opened it: lock the new one


def _refuse(out: Path, command: str, holder: int | None, fd: int) -> None:
    os.close(fd)
    who = f"pid {holder}" if holder is not None else "another process"
    raise UserError(
        f"--out {out} is being written by another `{command}` ({who}); wait for it to finish, or choose another --out"
    )


def _pid_in(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
