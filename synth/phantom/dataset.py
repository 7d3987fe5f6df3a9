"""``render_dataset``: a whole phantom dataset in the CXR-LT CSV format.

Layout of ``out``::

    labels.csv        CXR-LT columns (dicom_id, subject_id, study_id, ViewPosition, fpath + 40 classes, 0/1);
                      fpath relative to this folder -> `synth prepare --format cxrlt --images out`
    images/*.png      8-bit grey
    truth.jsonl       per image: true (noise-free) labels, view, and per finding its bounding box + render params
    phantom.json      arguments, seed, version, per-class counts and groups (and the site, if not A)
    contact_sheets/   (--contact-sheet) one PNG per class: with / without / |difference|, and all.png

Determinism: every image's seeds derive from (seed, index) and (seed, patient),
label sets are drawn in the parent process, so the output is byte-identical
for any number of workers. The folder is built under a temporary name and
renamed into place: a crash never leaves a half-written dataset that a later
stage would trust.

``site`` (:mod:`synth.phantom.sites`) renders the same findings through another acquisition (an external test
cohort with an oracle); the default site A writes exactly what it wrote before sites existed. Another site's
images, patients and studies carry its letter (``phb…``, ``B10000000``) and their seeds derive from
``(seed, site)``, so its patients are never site A's.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from synth.errors import UserError
from synth.io import make_readable_tempdir, write_json_atomic, write_text_atomic
from synth.output_folder import PHANTOM, owned_output, writing_folder
from synth.phantom.labels import RESHAPE, add_label_noise, label_matrix, sample_balanced_label_sets, sample_label_sets
from synth.phantom.render import RENDERER_VERSION, render_with_regions
from synth.phantom.sites import Site, get_site
from synth.taxonomy import CXR_LT_CLASSES, META_COLUMNS, class_slug, frequency_groups

LABELS_FILE = "labels.csv"
META_FILE = "phantom.json"
TRUTH_FILE = "truth.jsonl"
#: studies per patient: 1, 2 or 3 with these probabilities
STUDIES_PER_PATIENT = (0.55, 0.3, 0.15)


@dataclass(frozen=True)
class _Job:
    start: int
    labels: tuple[tuple[str, ...], ...]
    image_seeds: tuple[int, ...]
    patient_seeds: tuple[int, ...]
    names: tuple[str, ...]
    size: int
    folder: str
    site: str = "A"


def _seed(*key: int) -> int:
    return int(np.random.SeedSequence(key[0], spawn_key=key[1:]).generate_state(1, np.uint64)[0] >> 1)


def _bbox(mask: np.ndarray) -> list[int] | None:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1]


def _render_chunk(job: _Job) -> list[dict]:
    from PIL import Image

    rows = []
    for labels, s, ps, name in zip(job.labels, job.image_seeds, job.patient_seeds, job.names):
        r = render_with_regions(labels, s, job.size, patient_seed=ps, site=job.site)
        Image.fromarray(r.image).save(os.path.join(job.folder, "images", f"{name}.png"), format="PNG")
        row = {
            "dicom_id": name,
            "view": r.view,
            "labels": list(r.labels),
            "seed": s,
            "patient_seed": ps,
            "findings": {c: {"bbox": _bbox(r.regions[c]), "params": r.params.get(c, {})} for c in r.labels},
        }
        if r.acquisition:
            row["acquisition"] = r.acquisition
        rows.append(row)
    return rows


def check_render_args(
    n: int,
    size: int,
    seed: int,
    per_class: int | None = None,
    label_noise: float = 0.0,
    workers: int | None = None,
    balanced: bool = False,
) -> None:
    """:func:`render_dataset`'s arguments, checked before anything is rendered; also called by the ablation's
    preflight for every phantom set it will render, so a bad size or count fails before the first stage."""
    if n < 1:
        raise UserError(f"--n {n}: the number of images must be at least 1")
    if not 16 <= size <= 1024:
        raise UserError(f"--size {size}: must be between 16 and 1024 pixels")
    if seed < 0:
        raise UserError(f"--seed {seed}: must be >= 0")
    if per_class is not None and per_class < 1:
        raise UserError(f"--per-class {per_class}: must be at least 1")
    if not 0.0 <= label_noise < 1.0:
        raise UserError(f"--label-noise {label_noise}: must be in [0, 1)")
    if workers is not None and workers < 0:
        raise UserError(f"--workers {workers}: must be >= 0 (0 = one per CPU core)")
    if balanced and (per_class if per_class is not None else n // len(CXR_LT_CLASSES)) < 1:
        raise UserError(
            f"--n {n} is too small for --balanced: needs at least {len(CXR_LT_CLASSES)} images (one per class)"
        )
    if per_class is not None and not balanced:
        raise UserError("--per-class only applies with --balanced")


def _patients(n: int, seed: int) -> np.ndarray:
    """Patient index of each image: consecutive runs of 1-3 studies."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(104,))))
    k = rng.choice(len(STUDIES_PER_PATIENT), size=n, p=STUDIES_PER_PATIENT) + 1
    return np.repeat(np.arange(n), k)[:n]


def render_dataset(
    n: int,
    size: int,
    seed: int,
    out: str | os.PathLike,
    *,
    balanced: bool = False,
    per_class: int | None = None,
    label_noise: float = 0.0,
    contact_sheet: bool = False,
    workers: int | None = None,
    progress: bool = False,
    overwrite: bool = False,
    site: str | Site = "A",
) -> Path:
    """Render ``n`` phantom images into ``out`` as acquired at ``site``; returns the path of ``labels.csv``.

    An existing ``out`` made with the same arguments is reused (returned as is);
    one made with other arguments is an error unless ``overwrite``.
    """
    check_render_args(n, size, seed, per_class, label_noise, workers, balanced)
    acquisition = get_site(site)
    out = Path(out)
    args = {
        "n": n,
        "size": size,
        "seed": seed,
        "balanced": balanced,
        "per_class": per_class if balanced else None,
        "label_noise": label_noise,
        "renderer": RENDERER_VERSION,
    }
    if not acquisition.is_default:  # the default's arguments (its reuse key) stay as they were
        args["site"] = acquisition.name
    if _reused(out, args, overwrite, contact_sheet, size, seed, acquisition):
        return out / LABELS_FILE
    root = seed if acquisition.is_default else _seed(seed, 900, acquisition.seed_key)
    true_sets = _true_label_sets(n, root, balanced, per_class, acquisition)
    noisy = add_label_noise(true_sets, label_noise, root)

    patient = _patients(n, root)
    prefix = "ph" if acquisition.is_default else f"ph{acquisition.name.lower()}"
    names = tuple(f"{prefix}{seed:04d}{i:07d}" for i in range(n))
    image_seeds = tuple(_seed(root, 6, i) for i in range(n))
    patient_seeds = tuple(_seed(root, 5, int(p)) for p in patient)

    with writing_folder(out, PHANTOM) as tmp:
        (tmp / "images").mkdir()
        chunk = max(16, min(256, n // (4 * max(1, workers or os.cpu_count() or 1)) or 16))
        jobs = [
            _Job(
                a,
                tuple(true_sets[a : a + chunk]),
                image_seeds[a : a + chunk],
                patient_seeds[a : a + chunk],
                names[a : a + chunk],
                size,
                str(tmp),
                acquisition.name,
            )
            for a in range(0, n, chunk)
        ]
        truth = _run_jobs(jobs, workers, progress, n)
        _write_labels(tmp / LABELS_FILE, names, patient, truth, noisy, acquisition)
        write_text_atomic(
            tmp / TRUTH_FILE, "".join(json.dumps(r, default=_jsonable, sort_keys=True) + "\n" for r in truth)
        )
        write_json_atomic(tmp / META_FILE, _metadata(args, n, patient, truth, true_sets, noisy, acquisition))
        if contact_sheet:
            write_contact_sheets(tmp / "contact_sheets", size, seed, site=acquisition)
    return out / LABELS_FILE


def _reused(out: Path, args: dict, overwrite: bool, contact_sheet: bool, size: int, seed: int, site: Site) -> bool:
    """Whether the existing ``out`` is this very dataset (contact sheets added if now asked for).

    Another phantom dataset there is an error unless ``overwrite`` (then False: it is rendered anew); a folder that
    is not a phantom dataset (or holds other files too) is an error whatever the flag (:mod:`synth.output_folder`).
    """
    if not owned_output(out, PHANTOM, replacing=False):
        return False
    meta = out / META_FILE
    if (out / LABELS_FILE).exists():
        old = json.loads(meta.read_text()).get("arguments")
        if old == args:
            if contact_sheet and not (out / "contact_sheets").exists():
                tmp = make_readable_tempdir(out, ".contact_sheets.")
                try:
                    write_contact_sheets(tmp, size, seed, site=site)
                    os.replace(tmp, out / "contact_sheets")
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            return True
    if not overwrite:
        raise UserError(
            f"--out {out} already exists (a phantom dataset made with other arguments or another renderer "
            "version); pass --overwrite to replace it or choose a new folder"
        )
    owned_output(out, PHANTOM)  # to be replaced: holding nothing it did not write (checked before rendering)
    return False


def _true_label_sets(n: int, seed: int, balanced: bool, per_class: int | None, site: Site) -> list[tuple[str, ...]]:
    """The images' true label sets: the site's PadChest-like prevalence, or ``balanced`` (``per_class`` images per
    class)."""
    if balanced:
        k = per_class if per_class is not None else n // len(CXR_LT_CLASSES)
        return sample_balanced_label_sets(n, k, seed, site.reshape)
    return sample_label_sets(n, seed, site.reshape)


def _metadata(args: dict, n: int, patient: np.ndarray, truth: list[dict], true_sets, noisy, site: Site) -> dict:
    """``phantom.json``: the arguments (the reuse key), counts, positives (noisy and true), groups and views; for a
    site other than A also its acquisition settings."""
    y_true, y = label_matrix(true_sets), label_matrix(noisy)
    prevalence = dict(zip(CXR_LT_CLASSES, y.mean(0).tolist()))
    extra = {} if site.is_default else {"site": asdict(site)}
    return {
        "arguments": args,
        "version": _version(),
        "images": n,
        "patients": int(patient.max()) + 1,
        "labels_file": LABELS_FILE,
        "truth_file": TRUTH_FILE,
        "label_source": "PadChest study label sets mapped to CXR-LT (synth/resources/padchest-cxrlt-labelsets.csv)",
        "reshape": RESHAPE.__dict__,
        "positives": dict(zip(CXR_LT_CLASSES, y.sum(0).tolist())),
        "positives_true": dict(zip(CXR_LT_CLASSES, y_true.sum(0).tolist())),
        "groups": frequency_groups(prevalence),
        "views": {v: sum(r["view"] == v for r in truth) for v in ("PA", "AP")},
        **extra,
    }


def _run_jobs(jobs: Sequence[_Job], workers: int | None, progress: bool, n: int) -> list[dict]:
    workers = (os.cpu_count() or 1) if not workers else workers
    workers = min(workers, len(jobs))
    results: list[list[dict]] = [None] * len(jobs)  # type: ignore[list-item]
    bar = _progress(progress)
    with bar:
        task = bar.add_task("rendering phantom", total=n) if progress else None
        if workers <= 1:
            for i, job in enumerate(jobs):
                results[i] = _render_chunk(job)
                if progress:
                    bar.advance(task, len(job.names))
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_render_chunk, job): i for i, job in enumerate(jobs)}
                from concurrent.futures import as_completed

                for fut in as_completed(futures):
                    i = futures[fut]
                    results[i] = fut.result()
                    if progress:
                        bar.advance(task, len(jobs[i].names))
    return [r for chunk in results for r in chunk]


def _progress(enabled: bool):
    import contextlib

    if not enabled:

        class _Null(contextlib.nullcontext):
            def add_task(self, *a, **k):
                return None

            def advance(self, *a, **k):
                return None

        return _Null()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


def _write_labels(path: Path, names, patient, truth, noisy, site: Site) -> None:
    import pandas as pd

    mark = "" if site.is_default else site.name  # another site's patients and studies are never site A's
    y = label_matrix(noisy)
    df = pd.DataFrame(
        {
            "dicom_id": list(names),
            "subject_id": [f"{mark}{10_000_000 + int(p)}" for p in patient],
            "study_id": [f"{mark}{50_000_000 + i}" for i in range(len(names))],
            "ViewPosition": [r["view"] for r in truth],
            "fpath": [f"images/{nm}.png" for nm in names],
        }
    )
    for j, c in enumerate(CXR_LT_CLASSES):
        df[c] = y[:, j].astype(int)
    assert tuple(df.columns) == (*META_COLUMNS, *CXR_LT_CLASSES)
    write_text_atomic(path, df.to_csv(index=False, lineterminator="\n"))


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)


def _version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("cxr-synth")
    except Exception:  # pragma: no cover - not installed
        from synth import __version__

        return __version__


def write_contact_sheets(
    folder: str | os.PathLike, size: int, seed: int, examples: int = 6, site: str | Site = "A"
) -> Path:
    """Per class: row 1 the class alone on ``examples`` patients, row 2 the same patients without it,
    row 3 |difference| x4 (where the signature is); plus ``all.png`` with one labelled tile per class."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiles = []
    for ci, c in enumerate(CXR_LT_CLASSES):
        rows = [[], [], []]
        for e in range(examples):
            s = _seed(seed, 7, ci, e)
            with_ = render_with_regions([c], s, size, site=site).image
            without = render_with_regions([], s, size, site=site).image if c != "Normal" else with_
            rows[0].append(with_)
            rows[1].append(without)
            rows[2].append(
                np.clip(np.abs(with_.astype(np.int16) - without.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
            )
        sheet = np.concatenate([np.concatenate(r, 1) for r in rows], 0)
        Image.fromarray(sheet).save(folder / f"{class_slug(c)}.png")
        tiles.append(rows[0][0])
    cols, label_h = 8, 12
    tile_h = size + label_h
    canvas = Image.new("L", (cols * size, (len(tiles) + cols - 1) // cols * tile_h), 0)
    draw = ImageDraw.Draw(canvas)
    for i, (c, t) in enumerate(zip(CXR_LT_CLASSES, tiles)):
        x, y = (i % cols) * size, (i // cols) * tile_h
        canvas.paste(Image.fromarray(t), (x, y))
        draw.text((x + 1, y + size), c[: max(4, size // 6)], fill=255)
    canvas.save(folder / "all.png")
    return folder
