"""The output folder: checked before anything is written, claimed with a lock, stale results handled."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket

import pytest
from report_helpers import knn_result, patch_hit_result, provenance

from lastvit_eval.errors import InputError
from lastvit_eval.report import outdir
from lastvit_eval.report.outdir import LOCK_NAME, claim_output_dir, previous_results, release_output_dir
from lastvit_eval.report.write import write_run

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def results():
    return [patch_hit_result([True, False, True]), knn_result({10: 70.0})]


def lock_of(path) -> dict:
    return json.loads((path / LOCK_NAME).read_text())


# ---------------------------------------------------------------- unusable folders: one line, nothing written

def test_output_folder_is_a_file(tmp_path):
    f = tmp_path / "out"
    f.write_text("not a folder")
    with pytest.raises(InputError, match=rf"^{f}: output folder is a file$"):
        write_run(f, results(), provenance("c", "cls"))
    assert f.read_text() == "not a folder"


def test_output_folder_under_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    target = f / "deeper" / "run"
    with pytest.raises(InputError, match=rf"^{target}: output folder lies under {f}, which is a file$"):
        write_run(target, results(), provenance("c", "cls"))
    with pytest.raises(InputError, match="lies under"):
        claim_output_dir(target, overwrite=False)


def test_output_folder_not_writable(tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def deny(path, flags, mode=0o777, *a, **k):
        if ".lastvit-eval.probe." in str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(InputError, match=rf"^{out}: output folder is not writable \(Permission denied\)$"):
        write_run(out, results(), provenance("c", "cls"))
    assert list(out.iterdir()) == []


@pytest.mark.skipif(ROOT, reason="root writes into read-only folders")
def test_output_folder_read_only_for_real(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(InputError, match="not writable"):
            write_run(out, results(), provenance("c", "cls"))
        with pytest.raises(InputError, match="cannot create the output folder"):
            write_run(out / "sub", results(), provenance("c", "cls"))
    finally:
        out.chmod(0o755)


# ---------------------------------------------------------------- the lock

def test_claim_writes_lock_and_release_removes_it(tmp_path):
    out = tmp_path / "new" / "run"
    claim_output_dir(out, overwrite=False)
    held = lock_of(out)
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["started"]
    with pytest.raises(InputError, match="already claimed by this process"):
        claim_output_dir(out, overwrite=False)
    release_output_dir(out)
    assert not (out / LOCK_NAME).exists()
    claim_output_dir(out, overwrite=False)  # free again
    release_output_dir(out)


def _hold(path: str, ready, done) -> None:
    claim_output_dir(__import__("pathlib").Path(path), overwrite=False)
    ready.set()
    done.wait(30)
    release_output_dir(__import__("pathlib").Path(path))


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(tmp_path / "run"), ready, done))
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(InputError) as e:
            claim_output_dir(tmp_path / "run", overwrite=True)
        assert f"pid {p.pid} on {socket.gethostname()}" in str(e.value) and "\n" not in str(e.value)
    finally:
        done.set()
        p.join(30)
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # the holder released it
    claim_output_dir(tmp_path / "run", overwrite=False)
    release_output_dir(tmp_path / "run")


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=os.getpid)
    p.start()
    p.join(30)
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": p.pid, "host": socket.gethostname(), "started": "earlier"}))
    claim_output_dir(out, overwrite=False)
    assert lock_of(out)["pid"] == os.getpid()
    release_output_dir(out)


def test_lock_from_another_host_is_not_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "started": "2026-01-01T00:00:00"}))
    with pytest.raises(InputError, match=r"in use by another lastvit-eval \(pid 1 on gpu-node-7 since 2026"):
        claim_output_dir(out, overwrite=True)
    release_output_dir(out)  # not ours: left alone
    assert lock_of(out)["host"] == "gpu-node-7"


def _race(path: str, barrier, queue) -> None:
    from pathlib import Path

    barrier.wait(30)
    try:
        claim_output_dir(Path(path), overwrite=False)
        queue.put(("won", os.getpid()))
    except InputError as e:
        queue.put(("lost", str(e)))


@pytest.mark.parametrize("stale", [False, True])
def test_two_processes_racing_for_one_folder(tmp_path, stale):
    """Exactly one of two processes released at once gets the folder; the other is told who has it.
    With a stale lock in place both try to take it over: still exactly one wins."""
    ctx = mp.get_context("fork")
    out = tmp_path / "run"
    for round_ in range(4):
        target = out / str(round_)
        if stale:
            dead = ctx.Process(target=os.getpid)
            dead.start()
            dead.join(30)
            target.mkdir(parents=True)
            (target / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                        "started": "earlier"}))
        barrier, queue = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(target), barrier, queue)) for _ in range(2)]
        for p in procs:
            p.start()
        outcomes = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        won = [o for o in outcomes if o[0] == "won"]
        lost = [o for o in outcomes if o[0] == "lost"]
        assert len(won) == 1 and len(lost) == 1, outcomes
        assert f"pid {won[0][1]} " in lost[0][1]
        assert lock_of(target)["pid"] == won[0][1]


# ---------------------------------------------------------------- results of a previous run

def test_previous_results_refused_then_overwritten_exactly(tmp_path):
    out = tmp_path / "run"
    write_run(out, results(), provenance("c", "cls"))
    write_run(out / "last-k1", results(), provenance("c", "last"))  # a pooling sub-folder
    write_run(out / "keep", results(), provenance("c", "gap"))
    (out / "notes.txt").write_text("mine")
    (out / "keep" / "notes.txt").write_text("mine too")
    (out / "patch_hit_dropped.csv").write_text("image_id,reason\n")  # the pipeline's, same namespace
    written = {p.name for p in out.iterdir() if p.is_file()}

    with pytest.raises(InputError) as e:
        claim_output_dir(out, overwrite=False)
    assert str(e.value).startswith(f"{out}: holds results of a previous run (")
    assert "--overwrite" in str(e.value)
    assert not (out / LOCK_NAME).exists()  # a refused claim leaves no lock
    assert {p.name for p in out.iterdir() if p.is_file()} == written

    claim_output_dir(out, overwrite=True)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == [LOCK_NAME, "keep", "keep/notes.txt", "notes.txt"]  # last-k1/ emptied and removed
    assert previous_results(out) == []
    release_output_dir(out)


def test_legacy_run_without_files_list(tmp_path):
    """metrics.json written before it listed its files: its known names and its namespaces' CSVs go."""
    out = tmp_path / "run"
    write_run(out, results(), provenance("c", "cls"))
    record = json.loads((out / "metrics.json").read_text())
    del record["files"]
    (out / "metrics.json").write_text(json.dumps(record))
    (out / "other_tool.csv").write_text("x\n")
    assert sorted(p.name for p in previous_results(out)) == ["metrics.json", "patch_hit_rows.csv", "table.csv",
                                                            "table.md"]
    claim_output_dir(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "other_tool.csv"]
    release_output_dir(out)


def test_rows_without_metrics_json_count_as_results(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "patch_hit_rows.csv").write_text("image_id,top1\na,True\n")
    (out / "patch_hit_per_class.csv").write_text("class,n\n")
    (out / "readme.md").write_text("hi")
    assert [p.name for p in previous_results(out)] == ["patch_hit_per_class.csv", "patch_hit_rows.csv"]
    claim_output_dir(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "readme.md"]
    release_output_dir(out)


def test_empty_lock_file_eventually_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(outdir.time, "sleep", lambda s: None)
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("")
    with pytest.raises(InputError, match="could not take the lock"):
        claim_output_dir(out, overwrite=False)
