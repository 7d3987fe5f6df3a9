"""ONE atomic checkpoint save, ONE pruning rule, ONE resume, EMA weights as safetensors, and which
``checkpoint-<step>`` folder a run resumes from: the project's one checkpoint module.

Why not Accelerate's own conveniences:

* ``ProjectConfiguration(total_limit=)`` prunes *before* it writes the new checkpoint (``save_state`` deletes
  the oldest folders first), so a kill during the save can leave no complete checkpoint at all. Here the new
  folder is renamed into place complete and only then are old ones pruned (:func:`prune_oldest`).
* ``accelerator.register_for_checkpointing`` saves a registered object with ``torch.save`` to
  ``custom_checkpoint_<i>.pkl`` and loads it back with ``weights_only=False``, i.e. it unpickles whatever a
  checkpoint folder holds. The project's rule is that nothing is unpickled on load, so the extra state of a
  loop (EMA weights, progress, sampler position) is written by the loop's ``write_own`` callback as
  safetensors / JSON beside Accelerate's files, and :func:`pickled_custom_state` lets a loop refuse a folder
  that holds such pickles.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

from synth.errors import writer_errors

#: File-name pattern of the objects ``register_for_checkpointing`` pickles into a checkpoint folder.
CUSTOM_STATE_GLOB = "custom_checkpoint_*.pkl"


def save_state_atomically(
    accelerator, final: Path, write_own: Callable[[Path], None] | None = None, tmp: Path | None = None
) -> Path:
    """``accelerator.save_state`` + ``write_own(folder)`` into a temp folder, then rename it to ``final``.

    Every process calls it (each saves its own RNG state); only the main process runs ``write_own`` and the
    rename. A kill at any point leaves either the previous ``final`` or the new one, never a half-written folder:
    the old ``final`` (if any) is moved aside, the complete temp folder renamed in, and only then the old one
    deleted. ``tmp`` defaults to ``.<final name>.tmp`` beside ``final``; a stale one from a killed save is removed.
    """
    final = Path(final)
    tmp = Path(tmp) if tmp is not None else final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    tmp.mkdir(parents=True, exist_ok=True)
    with _partial_removed_on_disk_error(tmp, accelerator.is_main_process):
        accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if write_own is not None:
            with _partial_removed_on_disk_error(tmp, True):
                write_own(tmp)
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


@contextlib.contextmanager
def _partial_removed_on_disk_error(tmp: Path, is_main: bool) -> Iterator[None]:
    """A full disk is one error line (:func:`synth.errors.writer_errors`: an OSError, not safetensors' or
    torch.save's own error), and the half-written temp folder goes, so the space the user frees is not eaten by it."""
    try:
        with writer_errors(tmp):
            yield
    except OSError:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def prune_oldest(folders_oldest_first: Iterable[Path], keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` folders (``None`` keeps all); call it only after the newest is complete."""
    folders = list(folders_oldest_first)
    if keep is None:
        return []
    doomed = folders[: max(0, len(folders) - keep)]
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


def pickled_custom_state(folder: Path) -> list[str]:
    """Names of ``register_for_checkpointing`` pickles in ``folder``: a folder holding any is never resumed."""
    return sorted(p.name for p in Path(folder).glob(CUSTOM_STATE_GLOB))


def load_state(
    accelerator, folder: Path, read_own: Callable[[Path], None] | None = None, fix: str | None = None
) -> None:
    """Resume: ``accelerator.load_state(folder)`` (model, optimiser, RNG), then ``read_own(folder)``.

    Nothing is registered for checkpointing, so Accelerate unpickles no ``custom_checkpoint_*.pkl`` here. A folder
    whose files are truncated or corrupt (a copy cut short, a full disk) is one ``UserError`` naming it, with ``fix``
    (how the caller's command starts over), instead of a traceback from whichever reader met the damage first.
    """
    import json
    import pickle

    from safetensors import SafetensorError

    from synth.errors import UserError
    from synth.model_files import first_line

    try:
        accelerator.load_state(str(folder))
        if read_own is not None:
            read_own(Path(folder))
    except UserError:
        raise
    except (
        SafetensorError,
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        json.JSONDecodeError,
        UnicodeDecodeError,
        KeyError,
        ValueError,
        FileNotFoundError,
    ) as err:
        raise UserError(
            f"checkpoint {folder} cannot be resumed, a file in it is truncated or corrupt "
            f"({type(err).__name__}: {first_line(err, 120)}); {fix or 'delete it to start over'}"
        ) from None


def save_ema_shadow(path: Path, ema) -> None:
    """A diffusers ``EMAModel``'s shadow weights (keys ``p00000``, ...) and step count, as one safetensors file."""
    from synth.io import save_safetensors_atomic

    save_safetensors_atomic(
        path,
        {f"p{i:05d}": t for i, t in enumerate(ema.shadow_params)},
        metadata={"optimization_step": str(ema.optimization_step)},
    )


def load_ema_shadow(path: Path, ema) -> None:
    """Inverse of :func:`save_ema_shadow`: copy the saved shadow weights and step count into ``ema`` in place."""
    from safetensors.torch import load_file, safe_open

    tensors = load_file(str(path))
    for i, p in enumerate(ema.shadow_params):
        p.data.copy_(tensors[f"p{i:05d}"].to(p.device))
    with safe_open(str(path), "pt") as f:
        ema.optimization_step = int(f.metadata()["optimization_step"])


# ----------------------------------------------------------------------------- fingerprinted stage folders


def resume_or_start_afresh(
    accelerator,
    folder: Path,
    stamp: dict,
    stage: str,
    read_own: Callable[[Path], None],
    resumed: Callable[[], str],
    log: Callable[[str], None],
    required: str,
) -> None:
    """Resume ``folder/state`` when its ``fingerprint.json`` equals ``stamp`` (config, data, checkpoint format), it
    holds no pickle and has the loop's ``required`` file; else clear it.

    A folder that cannot be resumed is deleted with ``best.safetensors`` (one log line says why), and ``stamp`` is
    written into ``folder`` for the next resume. The layout of a fingerprinted stage folder (the classifier's and the
    verifier's training stages).
    """
    from synth.io import write_json_atomic
    from synth.model_files import read_json_object

    state_dir, best_file, fp_file = folder / "state", folder / "best.safetensors", folder / "fingerprint.json"
    fix = f"delete {folder} to start this stage over (finished stages and members are kept)"
    same = fp_file.exists() and {k: read_json_object(fp_file, fix).get(k) for k in stamp} == stamp
    unsafe = pickled_custom_state(state_dir)
    if state_dir.exists() and same and not unsafe and (state_dir / required).exists():
        load_state(accelerator, state_dir, read_own, fix)
        log(f"{stage}: {resumed()}")
    elif state_dir.exists():
        if accelerator.is_main_process:
            why = (
                f"it holds pickled {', '.join(unsafe)}, which is never unpickled"
                if unsafe
                else "config, data or checkpoint format changed since it was written"
                if not same
                else f"it has no {required}"
            )
            log(f"{stage}: not resuming the checkpoint in {folder} ({why}); starting afresh")
            shutil.rmtree(state_dir, ignore_errors=True)
            best_file.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(fp_file, stamp)


# ----------------------------------------------------------------------------- checkpoint-<step> folders

#: A run folder's checkpoints are ``checkpoint-<step>`` folders; one is complete once its loop's state file
#: (``TRAINER_STATE``, written last into the temp folder before the rename) is in it.
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    if not out_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in out_dir.iterdir()
        if p.is_dir() and (m := CHECKPOINT_RE.match(p.name)) and (p / TRAINER_STATE).exists()
    ]
    return sorted(found)


def resolve_checkpoint(out_dir: Path, spec: str | None) -> Path | None:
    """Where a run starts: unset / ``latest`` -> newest complete checkpoint in ``out_dir`` (None if there is
    none yet), so a plain re-run of the same command resumes; ``none`` -> None (start over); a path -> that folder."""
    from synth.errors import UserError

    if spec is not None and spec.strip().lower() == "none":
        return None
    if not spec or spec == "latest":
        found = list_checkpoints(out_dir)
        return found[-1][1] if found else None
    path = Path(spec)
    if not path.is_absolute() and not path.exists():
        path = out_dir / spec
    if not (path / TRAINER_STATE).exists():
        raise UserError(
            f"--resume_from_checkpoint {spec}: not a complete checkpoint folder (no {TRAINER_STATE}); use 'latest' or "
            f"a checkpoint-<step> folder of {out_dir}"
        )
    return path
