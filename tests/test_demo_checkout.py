"""The demo run from a clean checkout leaves `git status` clean; `demo --where` names the bundled files."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lastvit_eval.app import app

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def checkout(tmp_path) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the project")
    dest = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True, capture_output=True)
    # the working tree's .gitignore, in case it is newer than the last commit
    shutil.copy(ROOT / ".gitignore", dest / ".gitignore")
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-am", "gitignore", cwd=dest)
    assert _git("status", "--porcelain", cwd=dest) == ""
    return dest


def test_demo_from_a_clean_checkout_leaves_git_status_clean(checkout, monkeypatch):
    monkeypatch.chdir(checkout)
    tracked = {p: (checkout / p).read_bytes() for p in _git("ls-files", "results/demo", cwd=checkout).split()}
    assert tracked, "the checkout holds the committed demo results"
    r = CliRunner().invoke(app, ["demo", "--no-progress", "--workers", "0"])
    assert r.exit_code == 0, r.output
    out = checkout / "lastvit-eval-demo"
    assert (out / "report.md").is_file() and (out / "pictures" / "tiny_last" / "heatmaps.png").is_file()
    assert str(out.resolve()) in r.output.replace("\n", "")  # the final message names the folder
    assert "last-k1 = LAST pooling (k=1 patch per channel)" in r.output.replace("\n", " ")
    assert _git("status", "--porcelain", "--untracked-files=all", cwd=checkout) == ""
    assert all((checkout / p).read_bytes() == b for p, b in tracked.items())


def test_demo_where_prints_the_bundled_paths_and_a_command_that_runs():
    r = CliRunner().invoke(app, ["demo", "--where"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    data = Path(lines[0].split()[2])
    ckpts = [Path(w) for ln in lines if ln.rstrip().endswith("pooling)") for w in ln.split() if w.endswith(".pth")]
    assert (data / "val").is_dir() and (data / "train").is_dir() and (data / "bbox").is_dir()
    assert [c.name for c in ckpts] == ["tiny_cls.pth", "tiny_last.pth"] and all(c.is_file() for c in ckpts)
    cmd = shlex.split(lines[-1])
    assert cmd[:2] == ["lastvit-eval", "patch-hit"]
    assert Path(cmd[cmd.index("-c") + 1]) == ckpts[1] and Path(cmd[cmd.index("-r") + 1]) == data
    # the pasted command is accepted as it stands (a dry run: the plan is built, nothing is forwarded)
    r = CliRunner().invoke(app, [*cmd[1:cmd.index("-o")], "--dry-run", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "patch-hit on tiny_last.pth" in r.output
