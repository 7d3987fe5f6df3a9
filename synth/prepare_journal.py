"""The journal of ``synth prepare``'s image cache: what lets a killed prepare resume without trusting a bad file.

Each cached PNG gets one JSON line once it is in place: its name, its source (path, size, mtime) and size in
pixels, and the PNG's byte count and SHA-256. A rerun reuses a file only when its line says it came from the
same, unchanged source at the same size *and* the file still has exactly those bytes; anything else (a file
without a line, a changed source, a truncated or edited PNG) is decoded again. A line cut short by a kill is
skipped, and the later of two lines for one name wins, so appending is the only write the journal needs.
"""

from __future__ import annotations

import json
import os
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import IO, Any

from synth.hashing import hex_hash

JOURNAL_FILE = "cache.jsonl"


@dataclass(frozen=True)
class CachedImage:
    """The journal's record of one cached PNG."""

    src: str
    src_size: int
    src_mtime_ns: int
    size: int  #: pixels (the PNG is size x size)
    png_size: int
    sha256: str

    def matches_source(self, src: str, st: os.stat_result, size: int) -> bool:
        """Made from this very source file (path, size, mtime) at this size."""
        return (self.src, self.src_size, self.src_mtime_ns, self.size) == (src, st.st_size, st.st_mtime_ns, size)

    def matches_file(self, path: str | os.PathLike) -> bool:
        """``path`` holds exactly the recorded bytes (size first: the cheap check, then the hash)."""
        try:
            if os.stat(path).st_size != self.png_size:
                return False
            return hex_hash(Path(path).read_bytes(), algorithm="sha256") == self.sha256
        except OSError:
            return False


class CacheJournal:
    """Read an earlier run's records (``expect``) and append this run's (``record``); a context manager."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._known = _read(self.path)
        self._fh: IO[str] | None = None

    def __enter__(self) -> "CacheJournal":
        self._fh = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __len__(self) -> int:
        return len(self._known)

    def expect(self, name: str) -> CachedImage | None:
        return self._known.get(name)

    def record(self, name: str, entry: CachedImage) -> None:
        """One line per image, flushed at once: a kill loses at most the line being written (that image is redone)."""
        if self._fh is None:
            raise RuntimeError("CacheJournal.record outside its with-block")
        self._fh.write(json.dumps([name, *astuple(entry)]) + "\n")
        self._fh.flush()


def _read(path: Path) -> dict[str, CachedImage]:
    known: dict[str, CachedImage] = {}
    if not path.is_file():
        return known
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                name, *fields = json.loads(line)
                known[str(name)] = CachedImage(*fields)
            except (ValueError, TypeError):  # a line cut short by a kill, or not ours: that image is redone
                continue
    return known
