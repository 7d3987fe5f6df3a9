"""The one place content hashes are made: every cache key, fingerprint and derived seed goes through here.

Each caller names its algorithm and its length explicitly, because the keys already on users' disks were made
with different ones (sha256 cut to 12/16/20 hex for stage and member keys, blake2b with a 12- or 16-byte
digest for latent and image-set keys, an 8-byte blake2b for seeds) and must stay byte-identical: a changed key
silently rebuilds a cache, a changed seed changes every generated image.

Note the two algorithms shorten differently: blake2b's digest size is part of the hash (a 16-byte blake2b is
not the first half of a 32-byte one), sha256 is cut after hashing. ``Hasher`` hides that difference.
"""

from __future__ import annotations

import hashlib
import os
from typing import Literal

Algorithm = Literal["sha256", "blake2b"]
ALGORITHMS: tuple[str, ...] = ("sha256", "blake2b")


class Hasher:
    """An incremental hash whose ``hexdigest`` has exactly ``hex_chars`` characters (``None``: the full digest).

    blake2b is made with ``digest_size = hex_chars // 2`` (its keys depend on that size); sha256 is always
    full-size and cut at ``hex_chars``.
    """

    def __init__(self, algorithm: Algorithm, hex_chars: int | None = None) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"hash algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if hex_chars is not None and (hex_chars <= 0 or hex_chars % 2):
            raise ValueError(f"hex_chars {hex_chars} must be a positive even number")
        self.hex_chars = hex_chars
        if algorithm == "blake2b":
            self._h = hashlib.blake2b(digest_size=hex_chars // 2) if hex_chars else hashlib.blake2b()
        else:
            self._h = hashlib.sha256()

    def update(self, data: bytes | str) -> Hasher:
        self._h.update(data.encode() if isinstance(data, str) else data)
        return self

    def digest(self) -> bytes:
        d = self._h.digest()
        return d[: self.hex_chars // 2] if self.hex_chars else d

    def hexdigest(self) -> str:
        d = self._h.hexdigest()
        return d[: self.hex_chars] if self.hex_chars else d


def hex_hash(data: bytes | str, *, algorithm: Algorithm, hex_chars: int | None = None) -> str:
    """``data``'s hash in hex, ``hex_chars`` long (strings are hashed as UTF-8)."""
    return Hasher(algorithm, hex_chars).update(data).hexdigest()


def file_digest(path: str | os.PathLike, *, algorithm: Algorithm = "sha256") -> bytes:
    """The full digest of a file's bytes, read in chunks (weights files are gigabytes)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).digest()
