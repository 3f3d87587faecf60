"""The command-line tools as a user starts them: from any Python (the
project's .venv is found), and before Caffe is built (a clear error)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from liftedstruct.paths import REPO_ROOT

TOOLS = sorted(p for p in (REPO_ROOT / "tools").glob("*.py") if p.name != "_launch.py")
# The interpreter the .venv was made from: Python without the project's packages.
BASE_PYTHON = getattr(sys, "_base_executable", None) or "/usr/bin/python3"


def test_the_base_interpreter_lacks_the_project():
    probe = subprocess.run([BASE_PYTHON, "-c", "import liftedstruct, numpy"],
                           capture_output=True, text=True, cwd="/")
    assert probe.returncode != 0, "the tests below need a Python without the project"


@pytest.mark.parametrize("tool", TOOLS, ids=[tool.stem for tool in TOOLS])
def test_every_tool_runs_from_any_python(tool):
    """`python3 tools/x.py` (and the shebang's `env python3`) restart with
    .venv/bin/python: no ModuleNotFoundError outside the venv."""
    result = subprocess.run([BASE_PYTHON, str(tool), "--help"], capture_output=True,
                            text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:"), result.stdout[:200]
    assert tool.stat().st_mode & 0o111, f"{tool.name} is not executable"
    assert tool.read_text().startswith("#!/usr/bin/env python3\n")


def test_without_the_environment_the_tool_says_how_to_make_it(tmp_path):
    (tmp_path / "tools").mkdir()
    for name in ("_launch.py", "evaluate.py"):
        shutil.copy(REPO_ROOT / "tools" / name, tmp_path / "tools" / name)
    result = subprocess.run([BASE_PYTHON, str(tmp_path / "tools" / "evaluate.py"), "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "run tools/setup.sh first" in result.stderr and "Traceback" not in result.stderr


def readme_commands() -> list[str]:
    """Every command the README shows: the lines of its bash blocks (joined
    at a trailing backslash, comments cut) and its inline code that runs a
    tool or a Caffe program."""
    text = (REPO_ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line:
                commands += [part.strip() for part in line.split("&&")]
    for code in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        if re.search(r"(^|\s)(\S*tools/\w+\.py|\S*caffe) ", code):
            commands.append(code.strip())
    return commands


def test_readme_commands_work_outside_the_venv():
    """Each README command starts the way it works from a fresh shell: a
    tool through .venv/bin/python or by its path (the launcher), Caffe's
    programs from .venv/bin; never a bare `python` or `caffe`, which need an
    activated venv. Each tool named answers --help from the base Python."""
    commands = readme_commands()
    tools = set()
    for command in commands:
        words = command.split()
        if "docker" in words:
            continue
        first = words[0]
        assert first not in ("python", "python3", "caffe", "pip"), command
        for word in words:
            if re.fullmatch(r"tools/\w+\.py", word) and word != "tools/NAME.py":
                tools.add(word)
                assert first in (".venv/bin/python", word) or first.startswith(
                    "tools/"), command
    assert "tools/make_prototxt.py" in tools and "tools/extract_features.py" in tools
    for tool in sorted(tools):
        result = subprocess.run([BASE_PYTHON, str(REPO_ROOT / tool), "--help"],
                                capture_output=True, text=True, cwd="/")
        assert result.returncode == 0, (tool, result.stderr[-1000:])


def test_make_prototxt_as_the_readme_writes_it(tmp_path):
    """`tools/make_prototxt.py --dataset D --method M --embedding E --out DIR`
    started by its shebang, with a PATH whose python3 lacks the project."""
    env = {**os.environ, "PATH": f"{Path(BASE_PYTHON).parent}:/usr/bin:/bin"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run([str(REPO_ROOT / "tools" / "make_prototxt.py"), "--dataset", "cub",
                             "--method", "triplet", "--embedding", "64", "--out",
                             str(tmp_path / "nets")], capture_output=True, text=True,
                            cwd=REPO_ROOT, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p.name for p in (tmp_path / "nets").iterdir()} == {
        "train_val.prototxt", "solver.prototxt", "deploy.prototxt"}


def run_without_caffe(tmp_path, *args):
    env_root = tmp_path / "no_caffe"
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "CAFFE_ROOT": str(env_root)})


def test_tools_before_caffe_is_built(tmp_path):
    """The commonest first-run mistake ends in one line naming the fix."""
    np.savez(tmp_path / "f.npz", features=np.zeros((4, 2)), labels=np.array([0, 0, 1, 1]))
    (tmp_path / "deploy.prototxt").write_text("name: 'x'\n")
    (tmp_path / "w.caffemodel").write_bytes(b"x")
    tools = REPO_ROOT / "tools"
    cases = [
        [tools / "prepare_dataset.py", "digits", "--out", tmp_path / "prepared"],
        [tools / "reproduce.py", "--dataset", "digits", "--out", tmp_path / "run"],
        [tools / "extract_features.py", "--deploy", tmp_path / "deploy.prototxt",
         "--weights", tmp_path / "w.caffemodel", "--lmdb", tmp_path, "--out",
         tmp_path / "x.npz"],
        [tools / "run_gtests.py"],
    ]
    for args in cases:
        result = run_without_caffe(tmp_path, *args)
        assert result.returncode == 2, (args[0].name, result.stderr[-2000:])
        assert "build Caffe first with tools/setup.sh" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, args[0].name
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "run").exists()
