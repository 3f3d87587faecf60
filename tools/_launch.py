"""Makes every tool run with the project's environment, however it is started
(`tools/reproduce.py` through its shebang, `python3 tools/reproduce.py`): a
Python that cannot import the liftedstruct package and its dependencies
restarts the tool with the project's .venv/bin/python; without a .venv it
says how to make one. Imported first by each tool, so standard library only."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
RELAUNCHED = "LIFTEDSTRUCT_RELAUNCHED"
# The package, and a dependency every tool has through it (the package alone
# can be on the path of a Python without its dependencies).
NEEDED = ("liftedstruct", "numpy")


def ensure_environment() -> None:
    if all(importlib.util.find_spec(name) is not None for name in NEEDED):
        return
    tool = Path(sys.argv[0]).stem
    if VENV_PYTHON.is_file() and not os.environ.get(RELAUNCHED):
        os.environ[RELAUNCHED] = "1"
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), *sys.argv])
    print(f"{tool}: error: the project's environment is missing or broken "
          f"({VENV_PYTHON} cannot import {' and '.join(NEEDED)}); run tools/setup.sh first",
          file=sys.stderr)
    sys.exit(2)


ensure_environment()
