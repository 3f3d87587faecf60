"""What every tool shares: one error path (a LiftedError ends the tool with
its message and exit code 2, no traceback; so does any failed file operation
and a full disk, wherever they strike; Ctrl-C ends it with one line and exit
code 130, and the same command resumes), and the argparse types that check
every argument before any work: outputs that can be written, inputs that
are there and of the right kind, values in range."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from liftedstruct.errors import LiftedError
from liftedstruct.files import atomic_write_text, check_writable, is_disk_full

INTERRUPTED = 128 + signal.SIGINT  # the shell's code for a Ctrl-C


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A tool's parser, its module docstring as the help text, line breaks kept."""
    return argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def os_error_message(error: OSError) -> str:
    """One line for a failed file operation: the file(s), the reason, what to do."""
    if is_disk_full(error):
        where = f" writing {error.filename}" if error.filename else ""
        return (f"disk full{where} ({error.strerror}); free some space and run the same "
                "command again")
    names = [str(n) for n in (error.filename, error.filename2) if n is not None]
    where = " -> ".join(names)
    reason = error.strerror or str(error) or type(error).__name__
    return f"{where}: {reason}" if where else reason


def run(main: Callable[[], int | None]) -> int:
    """Call a tool's main; report a LiftedError (or a failed file operation)
    as `<tool>: error: ...` with exit code 2, a Ctrl-C as one line with 130."""
    tool = Path(sys.argv[0]).stem
    try:
        return main() or 0
    except LiftedError as error:
        print(f"{tool}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{tool}: interrupted; run the same command again to go on from where "
              "it stopped", file=sys.stderr)
        return INTERRUPTED
    except OSError as error:
        print(f"{tool}: error: {os_error_message(error)}", file=sys.stderr)
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


def _checked(check: Callable[[Path], None]) -> Callable[[str], Path]:
    def convert(text: str) -> Path:
        if not text:
            raise argparse.ArgumentTypeError("empty path")
        path = Path(text)
        try:
            check(path)
        except LiftedError as error:
            raise argparse.ArgumentTypeError(str(error).strip()) from error
        return path
    return convert


def _writable(kind: str) -> Callable[[Path], None]:
    return lambda path: check_writable(path, "", kind)


def _existing(kind: str) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        if not path.exists():
            raise LiftedError(f"{path}: no such {kind if kind != 'any' else 'file or folder'}")
        if kind == "file" and not path.is_file():
            raise LiftedError(f"{path}: a folder, not a file")
        if kind == "folder" and not path.is_dir():
            raise LiftedError(f"{path}: a file, not a folder")
    return check


def _datum_lmdb(path: Path) -> None:
    from liftedstruct.lmdbio import check_datum_lmdb

    check_datum_lmdb(path)


# argparse types: each checks its argument when the command line is parsed,
# before any work, and argparse names the option in its error.
output_folder = _checked(_writable("folder"))  # a folder that can be made or written into
output_file = _checked(_writable("file"))      # a file name whose folder can be written
input_file = _checked(_existing("file"))
input_folder = _checked(_existing("folder"))
input_path = _checked(_existing("any"))
datum_lmdb = _checked(_datum_lmdb)             # an LMDB of Caffe image Datums

# A CUDA compute capability as CMake's CUDA_ARCH_BIN takes it: major and minor
# digit(s), e.g. 80, 86, 90, 100, 120; CUDA 13 builds for 7.5 and newer.
CUDA_ARCH = re.compile(r"([1-9]\d?)(\d)")
OLDEST_CUDA_ARCH = 75


def cuda_arch(text: str) -> str:
    """argparse type: one compute capability (75, 80, 86, 89, 90, 100, 120, ...)."""
    found = CUDA_ARCH.fullmatch(text.strip().removeprefix("sm_"))
    if not found:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a CUDA compute capability (major and minor digits, e.g. "
            "80 for A100, 86 for RTX 30xx, 89 for L4/RTX 40xx, 90 for H100, 100 or 120 "
            "for Blackwell)")
    value = found.group(0)
    if int(value) < OLDEST_CUDA_ARCH:
        raise argparse.ArgumentTypeError(
            f"{value}: CUDA 13 builds for compute capability {OLDEST_CUDA_ARCH} and newer")
    return value


def write_json(path: Path | None, data: dict) -> None:
    """A --json result, written atomically (nothing when path is None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
