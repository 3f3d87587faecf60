"""The Python code is ruff-clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from liftedstruct.paths import REPO_ROOT

ROOT = REPO_ROOT


def test_ruff_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lints_every_package_module_and_no_build_output():
    """Caffe's build tree (build/) and the environment are left out of the
    lint, every package module is in it, even where .gitignore is not read
    (a Docker context)."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--show-files",
                             "--no-respect-gitignore", str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    listed = {Path(line).resolve() for line in result.stdout.splitlines() if line.strip()}
    package = set((ROOT / "liftedstruct").rglob("*.py"))
    assert package and package <= listed, sorted(map(str, package - listed))
    for folder in ("build", ".venv"):
        assert not any(p.is_relative_to(ROOT / folder) for p in listed), folder
