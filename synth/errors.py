"""The user-facing error type.

Anything raised as ``UserError`` is bad input the user can fix: the CLI prints
its message as one ``error:`` line and exits with status 2 (no traceback).
A permission or disk error (``OSError`` from the file system: read-only folder,
disk or quota full, ...) is the machine, not a bug: :func:`describe_os_error`
turns it into one line with the fix, exit status 1 -- as is a writer library's own error for a full disk
(:func:`as_os_error`: safetensors and torch.save do not raise ``OSError``). Everything else is a bug and
keeps its traceback (``SYNTH_TRACEBACK=1`` keeps it for OSError too).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from typing import Any, Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """Bad input; the message must name the file/column/option and the fix."""


def plain(value: Any) -> Any:
    """A cell as the plain Python value a message shows: ``2``, not ``np.int64(2)`` (numpy 2's repr).

    Messages quote user values with ``!r`` so blanks and strings stay visible; a numpy scalar must be
    unwrapped first, or the user reads numpy's type where their file says ``2``.
    """
    item = getattr(value, "item", None)
    return item() if callable(item) and type(value).__module__ == "numpy" else value


def describe_os_error(err: OSError, resumes: bool = False) -> str:
    """One line for a file-system error: what failed on which path, and what to do about it.

    ``resumes``: whether rerunning the failed command continues where it stopped (``generate``, ``ablate``,
    training) — only then does the disk-full fix promise a resume; elsewhere a rerun starts over.
    """
    where = err.filename if err.filename is not None else ""
    if err.filename2 is not None:
        where = f"{where} -> {err.filename2}"
    what = err.strerror or type(err).__name__
    if err.errno in (errno.EACCES, errno.EPERM) or isinstance(err, PermissionError):
        fix = "check the permissions of that path (or its folder), or choose another --out"
    elif err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space (or quota) there, or choose an --out on another disk; " + (
            "rerun to resume" if resumes else "then rerun the command (it starts over)"
        )
    elif err.errno == errno.EROFS:
        fix = "that file system is read-only; choose another --out"
    elif err.errno == errno.ENOENT:
        fix = "check that the path exists"
    else:
        fix = "check the path and the disk, then rerun"
    return f"{what}{': ' + str(where) if where else ''}; {fix}"


#: How the writer libraries report a full disk without raising ``OSError``: safetensors' Rust I/O error text
#: ("Error while serializing: I/O error: No space left on device (os error 28)", the quota's is os error 122).
_DISK_FULL_TEXT = re.compile(r"No space left on device|os error 28\b|Disk quota exceeded|os error 122\b")
#: torch.save's zip writer on a full disk: "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
#: (or "file write failed") -- it does not say why, so the free space there decides.
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos \d+ vs \d+|file write failed")
#: Free bytes below which a failed write is taken for a full disk.
NEARLY_FULL_BYTES = 64 * 2**20


def as_os_error(err: BaseException, path: str | os.PathLike | None = None) -> OSError | None:
    """The ``OSError`` a writer library's own exception stands for (a full disk), naming ``path``; None otherwise.

    safetensors raises ``SafetensorError`` and torch.save a ``RuntimeError`` when the disk fills up, which reached the
    user as a traceback (``classify train`` on a full disk, #35) instead of the one line with the fix.
    """
    if isinstance(err, OSError):
        return err
    text = str(err)
    where = None if path is None else str(path)
    if _DISK_FULL_TEXT.search(text):
        code = errno.EDQUOT if ("quota" in text.lower() or "os error 122" in text) else errno.ENOSPC
        return OSError(code, os.strerror(code), where)
    if _TORCH_WRITE_FAILED.search(text) and path is not None and _free_bytes(path) < NEARLY_FULL_BYTES:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)
    return None


def _free_bytes(path: str | os.PathLike) -> float:
    folder = os.path.abspath(path)
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return float("inf")


@contextlib.contextmanager
def writer_errors(path: str | os.PathLike) -> Iterator[None]:
    """Around a library writer (safetensors, ``torch.save``, ``accelerator.save_state``) writing ``path``: its
    full-disk error is raised as the ``OSError`` it is (see :func:`as_os_error`), so the CLI prints one line."""
    try:
        yield
    except OSError:
        raise
    except Exception as err:
        converted = as_os_error(err, path)
        if converted is None:
            raise
        raise converted from err


def resumable(fn: F) -> F:
    """Mark a command whose rerun continues where it stopped, for :func:`describe_os_error`'s disk-full fix."""
    fn.resumes_on_rerun = True  # type: ignore[attr-defined]
    return fn


@contextlib.contextmanager
def one_line_errors(exit_with: type[BaseException] = SystemExit, resumes: bool = False) -> Iterator[None]:
    """The one error handler of every entry point (``synth`` commands, ``python -m synth.inference``,
    ``synth/finetune.py``): ``UserError`` -> one ``error:`` line on stderr and exit 2; ``OSError`` ->
    one line naming the path and the fix, exit 1 (``SYNTH_TRACEBACK=1`` keeps its traceback).
    ``exit_with`` is ``typer.Exit`` inside a Typer command, ``SystemExit`` elsewhere; ``resumes`` as in
    :func:`describe_os_error`."""
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise exit_with(2) from None
    except Exception as err:
        converted = as_os_error(err)  # an OSError, or a writer's full-disk error that did not pass writer_errors
        if converted is None or os.environ.get("SYNTH_TRACEBACK"):
            raise
        print(f"error: {describe_os_error(converted, resumes)}", file=sys.stderr, flush=True)
        raise exit_with(1) from None
