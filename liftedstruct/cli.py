"""What every tool shares: one error path (a LiftedError ends the tool with
its message and exit code 2, no traceback) and small argparse helpers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from liftedstruct.errors import LiftedError


def run(main: Callable[[], int | None]) -> int:
    """Call a tool's main; report a LiftedError as `<tool>: error: ...`."""
    try:
        return main() or 0
    except LiftedError as error:
        print(f"{Path(sys.argv[0]).stem}: error: {error}", file=sys.stderr)
        return 2


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value
