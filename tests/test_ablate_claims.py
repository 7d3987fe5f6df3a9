"""Two invocations of one ablation split its steps (synth.ablation.claims): each step runs once, a dead owner's
claim is taken over, a live one is waited for (faked stages, real processes)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ablation_fakes import FakeStages, write_config

from synth.ablation import claims
from synth.ablation.config import load_ablation_config
from synth.ablation.runner import run_ablation
from synth.ablation.steps import DONE, folder_done, plan

ARMS = ["real_only", "synthetic_filtered"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _owner_file(folder: Path, pid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / claims.OWNER).write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "since": "then"}))


def test_a_claim_is_held_against_a_live_owner_and_taken_over_from_a_dead_one(tmp_path: Path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _owner_file(tmp_path / "busy", live.pid)
        _owner_file(tmp_path / "stale", _dead_pid())
        assert claims.held_elsewhere(tmp_path / "busy") and not claims.held_elsewhere(tmp_path / "stale")
        order = list(claims.free_first(["busy", "stale", "free"], lambda name: [tmp_path / name], folder_done))
        assert order == ["stale", "free", "busy"]
        with claims.hold(tmp_path / "stale", log=lambda m: None):
            assert claims.owner(tmp_path / "stale")["pid"] == os.getpid()
            with claims.hold(tmp_path / "stale", log=lambda m: None):  # re-entrant: no wait, no release
                pass
            assert claims.owner(tmp_path / "stale")["pid"] == os.getpid()
        assert claims.owner(tmp_path / "stale") is None
    finally:
        live.kill()
        live.wait()


def _first_pick(folders: list[Path], start, picks) -> None:
    """One invocation's first free_first pick, made the moment ``start`` opens; the step then runs for 0.5 s."""
    start.wait()
    for name in claims.free_first([f.name for f in folders], lambda name: [folders[0].parent / name], folder_done):
        picks.put(name)
        with claims.hold(folders[0].parent / name, log=lambda m: None):  # takes free_first's claim over
            time.sleep(0.5)
        return


@pytest.mark.skipif(sys.platform == "win32", reason="forks two invocations")
def test_two_invocations_looking_at_the_same_moment_pick_different_steps(tmp_path: Path):
    """free_first claims what it yields: two processes released together never both take the first free step (a
    look-then-claim would let both see it free, and one then wait out the other's step)."""
    ctx = multiprocessing.get_context("fork")
    folders = [tmp_path / "a", tmp_path / "b"]
    for _ in range(5):
        start, picks = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_first_pick, args=(folders, start, picks)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0]
        assert sorted([picks.get(timeout=5), picks.get(timeout=5)]) == ["a", "b"]
        assert not list(tmp_path.rglob(claims.OWNER))  # every claim released


def test_a_finished_step_still_held_elsewhere_is_passed_over(tmp_path: Path):
    """An arm's step is marked done before its owner predicts the held-out and external sets under the same claim:
    another invocation must take the next free step, not sit waiting on that one (seen in the levers run)."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _owner_file(tmp_path / "finishing", live.pid)
        (tmp_path / "finishing" / DONE).write_text("{}")
        (tmp_path / "cached").mkdir()
        (tmp_path / "cached" / DONE).write_text("{}")
        order = claims.free_first(["finishing", "cached", "free"], lambda name: [tmp_path / name], folder_done)
        assert [next(order), next(order)] == ["cached", "free"]
        assert next(order) == "finishing"  # only once nothing else is left
    finally:
        live.kill()
        live.wait()


def test_a_step_left_claimed_by_a_killed_run_is_taken_over(tmp_path: Path, monkeypatch):
    fake = FakeStages(monkeypatch)
    cfg = load_ablation_config(write_config(tmp_path, seeds=[0], arms=ARMS))
    generator = {s.name: s.folder for s in plan(cfg)}["generator"]
    _owner_file(generator, _dead_pid())
    run_ablation(cfg, log=lambda m: None)
    assert fake.calls.count("generator") == 1 and not (generator / claims.OWNER).exists()


def _invocation(config: Path, calls: Path) -> None:
    """One ``synth ablate`` process on fake stages whose generator and classifier take a while."""
    mp = pytest.MonkeyPatch()
    fake = FakeStages(mp)
    mp.setattr(claims, "POLL_SECONDS", 0.05)
    for name in ("train_generator", "train_arm"):
        real = getattr(fake, name)

        def slow(*args, _real=real, _name=name, **kwargs):
            with calls.open("a") as f:
                f.write(f"{os.getpid()} {_name} {args[2] if _name == 'train_generator' else args[5]}\n")
            _until_the_other_runs(calls, _name)
            time.sleep(0.6 if _name == "train_generator" else 0.2)
            return _real(*args, **kwargs)

        mp.setattr("synth.ablation.stages." + name, slow)
    run_ablation(load_ablation_config(config), log=lambda m: None)


def _until_the_other_runs(calls: Path, name: str, timeout: float = 20.0) -> None:
    """Hold a step until the other invocation has started a step of the same kind, so the split the test checks
    does not depend on how fast a loaded machine schedules the second process (it once did all the work alone)."""
    deadline = time.time() + timeout
    me = str(os.getpid())
    while time.time() < deadline:
        if any(pid != me and kind == name for pid, kind, _ in (ln.split() for ln in calls.read_text().splitlines())):
            return
        time.sleep(0.02)


@pytest.mark.skipif(sys.platform == "win32", reason="forks two invocations")
def test_two_invocations_of_one_ablation_split_the_work_and_run_each_step_once(tmp_path: Path):
    config = write_config(tmp_path, seeds=[0, 1, 2, 3], arms=ARMS, generator__seeds=[3, 4])
    calls = tmp_path / "calls.txt"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_invocation, args=(config, calls)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    lines = [line.split() for line in calls.read_text().splitlines()]
    generators = [(pid, what) for pid, name, what in lines if name == "train_generator"]
    arms = [(pid, what) for pid, name, what in lines if name == "train_arm"]
    assert len(generators) == 2 and len({what for _, what in generators}) == 2  # each generator trained once
    assert len({pid for pid, _ in generators}) == 2  # ... by a different invocation each
    assert len(arms) == len(ARMS) * 4 and len({what for _, what in arms}) == len(arms)
    assert len({pid for pid, _ in arms}) == 2  # the arm/seeds were shared out too
    cfg = load_ablation_config(config)
    assert all(s.done for s in plan(cfg))
    assert not list(Path(cfg.output_root).rglob(claims.OWNER))
    results = json.loads((cfg.report_dir / "results.json").read_text())
    assert {a["name"] for a in results["arms"]} == set(ARMS)
