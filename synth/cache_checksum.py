"""Content checksums of the caches the pipeline builds (the classifier's image cache, the generator's latents).

Why: a cache is found by its key (the image set, the model, the resolution), and a cache file of the right size
was trusted as it was. A file zeroed or rewritten in place keeps its size -- the classifier then trained on black
images and the generator on rewritten latents, with no word. Now each cache file has a sidecar
``<file>.blake2b.json`` holding a BLAKE2b digest per 64 MiB chunk, written when the cache is built; the first use
of the file in a process reads it once and compares (about as fast as the disk reads, and once per process:
later uses of the same unchanged file are free). A mismatch is the caller's to act on: warn and rebuild.

A cache built before checksums existed has no sidecar: it is trusted once and its checksum stored, so upgrading
rebuilds nothing. Cache keys are unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from synth.hashing import Hasher

#: Bytes hashed per digest: small enough that a damaged region is located, large enough that the sidecar is tiny.
CHUNK_BYTES = 64 * 2**20
SUFFIX = ".blake2b.json"
_ALGORITHM = "blake2b-128"

#: Files verified in this process, with the (size, mtime, inode) they had then: verified once per process.
_VERIFIED: dict[str, tuple[int, int, int]] = {}


def sidecar(path: str | os.PathLike) -> Path:
    """Where the checksum of ``path`` is kept: beside it."""
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


class ChunkHasher:
    """Digests of a byte stream, one per ``chunk_bytes``, fed in pieces of any size (as a cache is written)."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self.size = 0
        self._digests: list[str] = []
        self._current = self._new()
        self._filled = 0

    @staticmethod
    def _new():
        return Hasher("blake2b", hex_chars=32)

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), self.chunk_bytes - self._filled)
            self._current.update(view[:take])
            self._filled += take
            self.size += take
            view = view[take:]
            if self._filled == self.chunk_bytes:
                self._digests.append(self._current.hexdigest())
                self._current, self._filled = self._new(), 0

    def digests(self) -> list[str]:
        return self._digests + ([self._current.hexdigest()] if self._filled else [])


def file_digests(path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> ChunkHasher:
    """The chunk digests of a file as it is on disk."""
    hasher = ChunkHasher(chunk_bytes)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            hasher.update(block)
    return hasher


def write_checksum(path: str | os.PathLike, hasher: ChunkHasher | None = None) -> None:
    """Store the checksum of ``path`` (``hasher``: digests taken while it was written, so the file just built
    counts as verified in this process; else it is read now)."""
    from synth.io import write_json_atomic

    path = Path(path)
    hasher = hasher if hasher is not None else file_digests(path)
    write_json_atomic(
        sidecar(path),
        {"algorithm": _ALGORITHM, "chunk_bytes": hasher.chunk_bytes, "size": hasher.size, "chunks": hasher.digests()},
    )
    st = path.stat()
    _VERIFIED[str(path.resolve())] = (st.st_size, st.st_mtime_ns, st.st_ino)


def warn(message: str, log=None) -> None:
    """A cache found damaged: one ``warning:`` line on stderr (and in the stage's log)."""
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)
    if log is not None:
        log(f"warning: {message}")


def damage(path: str | os.PathLike) -> str | None:
    """None if ``path`` matches its stored checksum (or has none yet: then it is stored), else what differs.

    Verified once per process: a file unchanged since (same size, mtime and inode) is not read again.
    """
    path = Path(path)
    st = path.stat()
    identity = (st.st_size, st.st_mtime_ns, st.st_ino)
    if _VERIFIED.get(str(path.resolve())) == identity:
        return None
    side = sidecar(path)
    if not side.exists():  # built before checksums: trust it this once and store its checksum
        try:
            write_checksum(path)
        except OSError:  # a read-only cache folder: it stays unverified, as it always was
            pass
    else:
        why = _compare(path, side, st.st_size)
        if why is not None:
            return why
    _VERIFIED[str(path.resolve())] = identity
    return None


def _compare(path: Path, side: Path, size: int) -> str | None:
    try:
        record = json.loads(side.read_text())
        chunk_bytes, stored, expected = int(record["chunk_bytes"]), list(record["chunks"]), int(record["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"its checksum file {side.name} is unreadable"
    if size != expected:
        return f"it has {size} bytes, {expected} when it was built (truncated or rewritten)"
    actual = file_digests(path, chunk_bytes).digests()
    bad = next((i for i, (a, b) in enumerate(zip(actual, stored)) if a != b), None)
    if bad is None and len(actual) == len(stored):
        return None
    bad = bad if bad is not None else min(len(actual), len(stored))
    return f"its content changed since it was built (checksum mismatch from byte {bad * chunk_bytes})"


def forget(paths: Iterable[str | os.PathLike]) -> None:
    """Drop the files (and their checksums) of a cache being rebuilt; a missing one is fine."""
    for path in paths:
        path = Path(path)
        _VERIFIED.pop(str(path.resolve()), None)
        path.unlink(missing_ok=True)
        sidecar(path).unlink(missing_ok=True)
