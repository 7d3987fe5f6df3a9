"""``synth prepare`` at scale (issues 35 and 38): ``--overwrite`` replaces only its own output, one writer per
``--out``, and a killed run resumes from the images it cached, ending byte-identical to an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from data_fixtures import assert_one_error_line, invoke, make_cxrlt, prepare_args

import synth.prepare_images as prepare_images
from synth.errors import UserError
from synth.prepare import prepare_dataset
from synth.writer_lock import writer_lock

ROOT = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) -> its SHA-256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture()
def cxrlt(tmp_path: Path) -> tuple[Path, Path]:
    return make_cxrlt(tmp_path, patients=30, per_patient=3), tmp_path / "mimic"


# ---------------------------------------------------------------- --overwrite replaces only its own output


def _foreign_folders(root: Path, prepared: Path) -> dict[str, Path]:
    """Folders --overwrite must leave alone: each looks a bit like a dataset, none is only what prepare wrote."""
    import shutil

    only_manifest = root / "only_manifest"
    only_manifest.mkdir()
    (only_manifest / "manifest.csv").write_text("dicom_id,fpath\n")
    (only_manifest / "thesis.tex").write_text("years of work")
    with_notes = root / "with_notes"
    shutil.copytree(prepared, with_notes)
    (with_notes / "notes.txt").write_text("mine")
    extra_image = root / "extra_image"
    shutil.copytree(prepared, extra_image)
    (extra_image / "images" / "my_scan.png").write_bytes(b"a user's own file")
    a_file = root / "a_file"
    a_file.write_text("not a folder")
    return {"only_manifest": only_manifest, "with_notes": with_notes, "extra_image": extra_image, "a_file": a_file}


def test_overwrite_replaces_only_a_folder_prepare_wrote_and_leaves_others_byte_for_byte(cxrlt, tmp_path):
    """Old code: any folder with a manifest.csv was deleted by --overwrite."""
    csv, images = cxrlt
    prepared = prepare_dataset("cxrlt", csv, images, tmp_path / "prepared", size=8, workers=1).parent
    for name, folder in _foreign_folders(tmp_path, prepared).items():
        before = _tree(folder) if folder.is_dir() else folder.read_bytes()
        result = invoke(*prepare_args(csv, images, folder, "--size", "8", "--overwrite"))
        assert_one_error_line(result, str(folder), "not a `synth prepare` output")
        assert (_tree(folder) if folder.is_dir() else folder.read_bytes()) == before, name
        without_flag = invoke(*prepare_args(csv, images, folder, "--size", "8"))
        assert "--overwrite" not in without_flag.output, name  # never suggest the flag that would be refused
    # its own output is replaced, as before
    result = invoke(*prepare_args(csv, images, prepared, "--size", "12", "--overwrite"))
    assert result.exit_code == 0, result.output
    assert json.loads((prepared / "prepare.json").read_text())["config"]["size"] == 12


# ---------------------------------------------------------------- one writer per --out

_HOLD_LOCK = """
import sys
from synth.writer_lock import writer_lock
with writer_lock(sys.argv[1], "synth prepare"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_prepare_on_the_same_out_fails_naming_the_other_writer(cxrlt, tmp_path):
    """Old code: both runs reported success, with one run's data silently left."""
    csv, images = cxrlt
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env()
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        result = invoke(*prepare_args(csv, images, out, "--size", "8"))
        assert_one_error_line(result, str(out), "another `synth prepare`", f"pid {holder.pid}")
        assert not out.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert invoke(*prepare_args(csv, images, out, "--size", "8")).exit_code == 0  # released on exit


def test_a_stale_lock_of_a_dead_run_is_taken_over(cxrlt, tmp_path):
    csv, images = cxrlt
    dead_pid = 2**22 + 12345  # above a default Linux pid_max: never a live process
    (tmp_path / ".out.lock").write_text(f"{dead_pid}\n")
    prepare_dataset("cxrlt", csv, images, tmp_path / "out", size=8, workers=1)
    assert (tmp_path / "out" / "manifest.csv").is_file() and not (tmp_path / ".out.lock").exists()


def test_the_lock_is_held_per_out_in_process_too(tmp_path):
    with writer_lock(tmp_path / "out", "synth prepare"):
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            with writer_lock(tmp_path / "out", "synth prepare"):
                pass
        with writer_lock(tmp_path / "other", "synth prepare"):  # another --out: its own lock
            pass
    with writer_lock(tmp_path / "out", "synth prepare"):  # released
        pass


# ---------------------------------------------------------------- kill -9, then a plain rerun

_KILLED_RUN = """
import os, signal, sys
from synth.cli import app
from synth.prepare_journal import CacheJournal

record, done = CacheJournal.record, 0


def record_then_die(self, name, entry):
    global done
    record(self, name, entry)
    done += 1
    if done == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)


CacheJournal.record = record_then_die
app(sys.argv[2:])
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_mid_prepare_then_a_plain_rerun_is_byte_identical_to_an_uninterrupted_run(
    cxrlt, tmp_path, monkeypatch, workers
):
    """Old code: the cache lived in a per-run temporary folder that the rerun deleted, so every image was decoded
    again (and at MIMIC scale one interruption cost the whole run)."""
    csv, images = cxrlt
    args = prepare_args(csv, images, tmp_path / "out", "--size", "16", "--workers", str(workers), "--no-progress")
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_RUN), "40", *args[:]],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    work = tmp_path / ".out.partial"
    assert not (tmp_path / "out").exists() and work.is_dir()
    cached = sorted((work / "images").glob("*.png"))
    assert len(cached) >= 40
    # what else a kill can leave: a torn write's temporary, and a cached file whose bytes no longer match
    (work / "images" / f".{cached[0].name}.abc123.tmp").write_bytes(b"\x89PNG")
    cached[1].write_bytes(cached[1].read_bytes()[:20])

    decoded: list[str] = []
    cache_entry = prepare_images._cache_entry

    def counting(task):
        result = cache_entry(task)
        if result.error is None and not result.reused:
            decoded.append(Path(task.dst).name)
        return result

    monkeypatch.setattr(prepare_images, "_cache_entry", counting)
    resumed = invoke(*prepare_args(csv, images, tmp_path / "out", "--size", "16", "--workers", "1"))
    assert resumed.exit_code == 0, resumed.output
    assert cached[1].name in decoded  # the damaged file was made again, not trusted
    assert len(decoded) <= 90 - 40 + 1  # the journalled images were kept, not decoded again

    whole = tmp_path / "whole"
    assert invoke(*prepare_args(csv, images, whole, "--size", "16", "--workers", "1")).exit_code == 0
    assert _tree(tmp_path / "out") == _tree(whole)  # manifest, stats, prepare.json and every cached image
    assert not list(tmp_path.glob(".out.*")) and not list(tmp_path.glob(".whole.*"))


def test_a_rerun_after_an_unreadable_image_keeps_what_was_cached_and_drops_what_is_no_longer_listed(cxrlt, tmp_path):
    csv, images = cxrlt
    bad = next(images.rglob("d0051.png"))
    good = bad.read_bytes()
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    assert_one_error_line(invoke(*prepare_args(csv, images, out, "--size", "16")), "d0051.png", "rerun")
    (tmp_path / ".out.partial" / "images" / "gone.png").write_bytes(b"of an earlier label file")
    bad.write_bytes(good)
    assert invoke(*prepare_args(csv, images, out, "--size", "16")).exit_code == 0
    whole = tmp_path / "whole"
    assert invoke(*prepare_args(csv, images, whole, "--size", "16")).exit_code == 0
    assert _tree(out) == _tree(whole)


# ---------------------------------------------------------------- memory flat in the number of rows


def _cache_peak_bytes(images: Path, rows, folder: Path) -> int:
    import tracemalloc

    folder.mkdir()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        assert not prepare_images.cache_images(rows, folder, 8, 1, False)
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_caching_memory_does_not_grow_with_the_number_of_rows(tmp_path):
    """Tasks are streamed and only bad rows are kept: 4x the rows may not cost 100 bytes a row more
    (old code: a list of every row's task, ~150 bytes a row measured, before the first image was decoded)."""
    import pandas as pd

    csv = make_cxrlt(tmp_path, patients=200, per_patient=2)
    df = pd.read_csv(csv, dtype=str)
    rows = pd.DataFrame(
        {"fpath": [str(tmp_path / "mimic" / f) for f in df["fpath"]], "cache_name": df["dicom_id"] + ".png"}
    )
    _cache_peak_bytes(tmp_path, rows.head(10), tmp_path / "warm")  # one-off allocations (PIL's plugins ...)
    small = _cache_peak_bytes(tmp_path, rows.head(100), tmp_path / "small")
    large = _cache_peak_bytes(tmp_path, rows, tmp_path / "large")
    assert large - small < 100 * (len(rows) - 100), (small, large)  # measured here: no growth
