"""What a command may replace at ``--out``, and how it replaces it.

Why this module: ``--overwrite`` used to delete whatever ``--out`` named, with whatever it held (#35). Now a
command's output is recognised by the marker file the command writes into it (``phantom.json``, the filter's
``summary.json``, ``synth evaluate``'s ``metrics.json``; for ``synth predict``'s single CSV, its header).
``--overwrite`` replaces only an output of the same kind, and only when the folder holds nothing else than what
the command writes; anything else is one ``error:`` line naming the folder, and every byte stays in place. That
refusal never suggests ``--overwrite``: the flag would not help, and a user must not learn to reach for it.

A whole output folder is written into a temporary folder beside ``--out`` and swapped in at the end
(:func:`writing_folder`), so a failure mid-write (a full disk, a kill) leaves the earlier folder whole. A temporary
is named ``.<out>.<pid>.<random>.tmp`` (``.old`` while swapping): the next run removes those of a process that is
gone (:func:`remove_stale_temporaries`), and never another live run's.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from synth.errors import UserError
from synth.io import make_readable_tempdir
from synth.model_card import CARD_NAME, GRID_NAME


@dataclass(frozen=True)
class OutputKind:
    """The output of one command: how to recognise it and which top-level names the command writes."""

    command: str  #: named in messages: ``synth filter``
    marker: str  #: the file that says the command wrote this folder (a folder kind), or the file's example name
    entries: tuple[str, ...] = ()  #: fnmatch patterns of every top-level name the command writes (folder kind)
    marker_keys: tuple[str, ...] = ()  #: top-level JSON keys the marker holds: a user's own summary.json is not ours
    recognise_file: Optional[Callable[[Path], bool]] = None  #: set for a single-file output: is this file ours?

    @property
    def is_folder(self) -> bool:
        return self.recognise_file is None

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is an output this command wrote (by its marker, or the file's own content)."""
        if not self.is_folder:
            return path.is_file() and self.recognise_file(path)
        marker = path / self.marker
        if not marker.is_file():
            return False
        if not self.marker_keys:
            return True
        try:
            data = json.loads(marker.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(data, dict) and all(k in data for k in self.marker_keys)

    def foreign(self, folder: Path) -> list[str]:
        """Top-level names in ``folder`` this command does not write; the temporaries of its entries
        (``.<entry>.*.tmp`` of :func:`synth.io.atomic_path` or a folder write, left by a kill) count as its own."""
        patterns = [*self.entries, *(f".{e}.*.tmp" for e in self.entries)]
        return sorted(p.name for p in folder.iterdir() if not any(fnmatch.fnmatchcase(p.name, e) for e in patterns))


def _submission_csv(path: Path) -> bool:
    """A CSV whose header is ``dicom_id`` and CXR-LT class names only: what ``synth predict`` writes."""
    from synth.taxonomy import CXR_LT_CLASSES

    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\r\n").split(",")
    except (OSError, UnicodeDecodeError):
        return False
    return len(header) > 1 and header[0] == "dicom_id" and set(header[1:]) <= set(CXR_LT_CLASSES)


PHANTOM = OutputKind(
    "synth phantom",
    "phantom.json",
    # heldout.csv / external.csv: the ablation's held-out and external test rows, beside the phantom it rendered
    ("phantom.json", "labels.csv", "truth.jsonl", "images", "contact_sheets", "heldout.csv", "external.csv"),
    ("arguments",),
)
FILTER = OutputKind(
    "synth filter",
    "summary.json",
    # and its model card with the grid of kept images (synth.model_card)
    ("summary.json", "summary.csv", "kept.csv", "rejected.csv", "scores.csv", CARD_NAME, GRID_NAME),
    ("classes", "near_copy", "verifier"),
)
EVALUATE = OutputKind(
    "synth evaluate",
    "metrics.json",
    ("metrics.json", "probs.csv", "submission.csv"),
    ("split", "model", "submission"),
)
PREDICT = OutputKind("synth predict", "submission.csv", recognise_file=_submission_csv)

#: Marker files of other commands' outputs, to say what an existing --out is when it is not the command's own.
OTHER_MARKERS: dict[str, str] = {
    "prepare.json": "synth prepare",
    "generate_run.json": "synth generate",
    "ensemble.json": "synth classify train",
    "verifier.json": "synth verifier train",
    "done.json": "synth ablate",
}


def folder_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be one folder name under an output root, or None: ``..`` or ``a/b`` would write outside
    the folder meant for it (``..`` into the output root itself), ``""`` into the root."""
    if not isinstance(name, str):
        return "is not text"
    if not name.strip():
        return "is empty"
    if name in (".", ".."):
        return "names the folder itself or its parent"
    bad = sorted({c for c in name if c in "/\\" or ord(c) < 32})
    if bad:
        return f"holds {', '.join(repr(c) for c in bad)}"
    return None


def owned_output(out: Path, kind: OutputKind, replacing: bool = True) -> bool:
    """Whether ``out`` holds an earlier output of ``kind`` that may be replaced; False when there is nothing to lose
    (absent, or an empty folder). Anything else is a ``UserError`` naming the folder, and nothing is touched.

    ``replacing=False``: the output is only to be reused (``synth phantom`` with the same arguments), so other files
    in it are no obstacle."""
    if not out.exists() and not out.is_symlink():
        return False
    if kind.is_folder:
        if not out.is_dir():
            raise UserError(f"--out {out} is a file, not a folder; choose another --out (nothing was changed)")
        if not any(out.iterdir()):
            return False
        if not kind.owns(out):
            raise UserError(
                f"--out {out} {_what_it_is(out, kind)}; choose a new or empty folder (nothing was changed)"
            )
        extra = kind.foreign(out) if replacing else []
        if extra:
            shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
            raise UserError(
                f"--out {out} holds files `{kind.command}` did not write ({shown}); move them out of it or choose "
                "another --out (nothing was changed)"
            )
        return True
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / kind.marker}")
    if not kind.owns(out):
        raise UserError(
            f"--out {out} exists and is not a file `{kind.command}` wrote; choose another --out (nothing was changed)"
        )
    return True


def check_out(out: Path, kind: OutputKind, overwrite: bool) -> bool:
    """:func:`owned_output`, and an earlier output of ``kind`` is kept unless ``overwrite``; returns whether one is
    there to replace."""
    owned = owned_output(out, kind)
    if owned and not overwrite:
        raise UserError(
            f"--out {out} already exists (an earlier `{kind.command}` output); pass --overwrite to replace it or "
            "choose another --out"
        )
    return owned


def _what_it_is(out: Path, kind: OutputKind) -> str:
    for marker, command in OTHER_MARKERS.items():
        if (out / marker).is_file():
            return f"holds a `{command}` output ({marker}), not a `{kind.command}` one"
    if (out / kind.marker).exists():
        return f"exists and is not a `{kind.command}` output (its {kind.marker} is not one that command writes)"
    return f"exists and is not a `{kind.command}` output (no {kind.marker})"


def temp_prefix(out: Path) -> str:
    """``.<out>.<pid>.``: the prefix of a temporary beside ``out`` that :func:`remove_stale_temporaries` knows."""
    return f".{out.name}.{os.getpid()}."


def remove_stale_temporaries(out: Path) -> None:
    """Remove ``.<out>.<pid>.*.tmp`` / ``.old`` folders beside ``out`` left by a killed run (its pid is gone).

    Why the pid: a second run writing beside the same ``--out`` right now must keep its folder.
    """
    if not out.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(\d+)\.[^.]+\.(tmp|old)$")
    for path in out.parent.iterdir():
        match = pattern.match(path.name)
        if match and path.is_dir() and not path.is_symlink() and not pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed only after."""
    if not out.exists() and not out.is_symlink():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=temp_prefix(out), suffix=".old", dir=out.parent))
    os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / out.name, out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def writing_folder(out: Path, kind: OutputKind) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` to write the whole output into; on success it replaces ``out``, on
    any failure it is removed and ``out`` is as it was.

    ``out`` is checked again at the swap (:func:`owned_output`): a folder that is not an output of ``kind`` is
    never replaced, even one that appeared while the command ran.
    """
    out = Path(os.path.abspath(out))  # `--out .` has a name and a parent to write the temporary beside
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = make_readable_tempdir(out.parent, temp_prefix(out))
    try:
        yield tmp
        owned_output(out, kind)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
