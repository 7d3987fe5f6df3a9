"""Atomic file writes.

Every artefact the pipeline produces is written to a temporary file in the
same directory and renamed into place, so a crash (or kill -9) never leaves a
half-written manifest, checkpoint or image that a later stage would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from synth.hashing import Hasher


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp)
    try:
        # mkstemp creates 0600; a plain open() would give 0666 minus the umask (0644 usually), and the
        # lab's other accounts must be able to read datasets, manifests, images and weights
        os.close(fd)
        yield tmp_path
        # after the writer, not before: some writers (safetensors' save_file) replace the file with a new 0600 one
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask: from ``/proc/self/status`` where there is one (thread-safe), else by setting
    and at once restoring it (``os.umask`` can only be read that way)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def save_image_atomic(path: str | os.PathLike, image: "Image.Image", **save_kwargs: Any) -> None:  # noqa: F821
    """Save a PIL image atomically (format from the final suffix, not the temp one)."""
    path = Path(path)
    fmt = save_kwargs.pop("format", None) or {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(
        path.suffix.lower(), "PNG"
    )
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **save_kwargs)


def save_safetensors_atomic(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    from synth.errors import writer_errors

    with atomic_path(path) as tmp, writer_errors(path):  # a full disk: an OSError naming the file, not SafetensorError
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_yaml_mapping(path: str | os.PathLike, missing_hint: str | None = None) -> dict:
    """A YAML file that must hold a mapping; a missing file, bad syntax or another shape is one ``UserError``
    naming the file.

    Every stage's config loader reads its file through here (via :func:`synth.config.load_config`, which also
    checks the keys), so a broken config reads the same everywhere.
    """
    import yaml

    from synth.errors import UserError

    path = Path(path)
    if missing_hint is not None and not path.is_file():
        raise UserError(f"config file not found: {path}; {missing_hint}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option: value at the top level")
    return data


def read_json_file(path: str | os.PathLike, default_name: str, *, missing: str, invalid: str) -> tuple[Path, Any]:
    """(the file read, its parsed JSON): ``path``, or ``path/default_name`` for a folder.

    A missing file or broken JSON is one ``UserError``: ``missing`` and ``invalid`` are its text, formatted with
    ``{path}`` (and ``{err}``), so each caller names the command that (re)writes its file.
    """
    from synth.errors import UserError

    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise UserError(missing.format(path=path))
    try:
        return path, json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(invalid.format(path=path, err=err)) from None


def image_set_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """Hash of the ordered image paths with each file's size and mtime: rows added, removed, reordered or
    re-rendered (``synth prepare --overwrite`` rewrites in place, changing the mtime) give a new key.
    Every cache built from images (the classifier's pixels, the generator's latents) is keyed by it."""
    h = Hasher("blake2b", hex_chars=32)
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def make_readable_tempdir(parent: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> Path:
    """A temp folder in ``parent`` (to be renamed into place) with the umask's mode instead of mkdtemp's 0700,
    so the dataset it becomes is readable by the lab."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp
