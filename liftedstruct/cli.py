"""What every tool shares: one error path (a LiftedError ends the tool with
its message and exit code 2, no traceback; so does a full disk, wherever it
strikes) and small argparse helpers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from liftedstruct.errors import LiftedError
from liftedstruct.files import atomic_write_text, is_disk_full


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A tool's parser, its module docstring as the help text, line breaks kept."""
    return argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def run(main: Callable[[], int | None]) -> int:
    """Call a tool's main; report a LiftedError as `<tool>: error: ...`."""
    tool = Path(sys.argv[0]).stem
    try:
        return main() or 0
    except LiftedError as error:
        print(f"{tool}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if not is_disk_full(error):
            raise
        where = f" writing {error.filename}" if error.filename else ""
        print(f"{tool}: error: disk full{where} ({error.strerror}); free some space "
              "and run the same command again", file=sys.stderr)
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


def write_json(path: Path | None, data: dict) -> None:
    """A --json result, written atomically (nothing when path is None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
