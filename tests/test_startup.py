"""Instant start: `--help`, `--version` and errors that need no model answer without importing torch;
help shows flags without a `<bool>` type and every option name whole at 100 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.main import get_command
from typer.testing import CliRunner

from lastvit_eval.app import app

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "lastvit_eval" / "demo" / "checkpoints" / "tiny_cls.pth"

# Each case runs the real CLI in one fresh interpreter; after each, torch must not have been imported.
CASES = [
    (["--help"], 0, "Usage"),
    (["--version"], 0, "lastvit-eval"),
    (["run", "--help"], 0, "--evaluators"),
    (["knn", "--dtype", "fp8"], 2, "--dtype 'fp8'"),
    (["run", "-e", "bogus"], 2, "unknown evaluator 'bogus'"),
    (["patch-hit", "--on-bad-image", "ignore"], 2, "--on-bad-image 'ignore'"),
    (["classify", "--decode", "nvjpeg"], 2, "--decode 'nvjpeg'"),
    (["patch-hit", "-c", str(CKPT), "-r", "/no/such/root"], 2, "/no/such/root: dataset root does not exist"),
    (["patch-hit", "-c", "/no/such.pth", "-r", str(ROOT)], 2, "/no/such.pth: checkpoint file not found"),
    (["run", "--limit", "0"], 2, "--limit 0"),
    (["extract", "-o", "x.txt"], 2, "use a .npz or .safetensors"),
    (["visualize"], 2, "needs --checkpoint"),
    (["demo", "--dtype", "fp8"], 2, "--dtype 'fp8'"),
]

CHILD = """
import json, sys
from typer.testing import CliRunner
from lastvit_eval.cli import app
out = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, args)
    out.append({"code": r.exit_code, "output": r.output, "torch": "torch" in sys.modules})
print(json.dumps(out))
"""


def test_no_torch_for_help_version_and_option_errors():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps([c[0] for c in CASES])], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for (args, code, text), got in zip(CASES, json.loads(p.stdout), strict=True):
        assert got["code"] == code, (args, got["output"])
        assert text in got["output"], (args, got["output"])
        assert not got["torch"], f"{args} imported torch"
        if code == 2:
            assert got["output"].strip().count("\n") == 0, (args, got["output"])  # one line


def test_importing_the_cli_imports_no_torch_pandas_or_scipy():
    code = "import sys, lastvit_eval.cli; print(sorted(m for m in ('torch', 'pandas', 'scipy', 'numpy') " \
           "if m in sys.modules))"
    p = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_evaluator_names_without_import_match_the_registry():
    from lastvit_eval.commands.run import evaluator_names
    from lastvit_eval.evaluators import EVALUATORS, available

    available()  # loads the built-in modules
    builtin = {n for n, c in EVALUATORS.items() if c.__module__.startswith("lastvit_eval.evaluators.")}
    assert builtin >= {"patch-hit", "knn", "linear-probe", "classify", "zero-shot"}
    scanned = evaluator_names()
    assert builtin <= scanned
    assert scanned - builtin <= set(EVALUATORS)  # the rest: evaluators that tests registered in this process


def _commands(group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))


def test_help_of_every_command_fits_100_columns_without_bool_and_with_whole_option_names(monkeypatch):
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    root = get_command(app)
    runner = CliRunner()
    commands = [((), root), *_commands(root)]
    assert len(commands) > 15
    for path, cmd in commands:
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
        assert r.exit_code == 0, (path, r.output)
        assert "<bool>" not in r.output, path
        assert "…" not in r.output, (path, r.output)
        assert max(len(line) for line in r.output.splitlines()) <= 100, path
        words = set(r.output.replace("│", " ").replace(",", " ").split())
        for param in cmd.params:
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("-"):
                    assert opt in words, (path, opt)


def test_help_without_a_terminal_is_100_columns_wide(monkeypatch):
    """CliRunner output is not a TTY; with no COLUMNS the help still uses 100 columns, not Rich's 80."""
    import typer.rich_utils as ru

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    monkeypatch.setattr(ru, "MAX_WIDTH", None)
    r = CliRunner().invoke(app, ["patch-hit", "--help"])
    assert r.exit_code == 0
    assert max(len(line) for line in r.output.splitlines()) == 100
    assert "--trust-checkpoint" in r.output


def test_a_registered_class_without_a_literal_name_leaves_the_check_to_the_registry():
    import ast

    from lastvit_eval.commands.run import _literal_name

    literal, annotated, computed = (ast.parse(src).body[0] for src in (
        "class A:\n    name = 'a-b'\n    taps = frozenset()\n",
        "class B:\n    name: str = 'b'\n",
        "class C:\n    name = PREFIX + 'c'\n"))
    assert _literal_name(literal) == "a-b"
    assert _literal_name(annotated) == "b"
    assert _literal_name(computed) is None
