#!/usr/bin/env python3
"""Write every net and solver (prototxt/) from the one template in
liftedstruct/prototxt.py; --check fails if the committed files differ."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liftedstruct.paths import REPO_ROOT  # noqa: E402
from liftedstruct.prototxt import all_files  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "prototxt")
    parser.add_argument("--check", action="store_true",
                        help="compare with the files in --out instead of writing")
    args = parser.parse_args()
    files = all_files()
    existing = {p.relative_to(args.out).as_posix() for p in args.out.rglob("*.prototxt")} \
        if args.out.exists() else set()
    if args.check:
        stale = sorted(existing - set(files))
        differ = sorted(name for name, text in files.items()
                        if not (args.out / name).exists()
                        or (args.out / name).read_text() != text)
        for name in differ:
            print(f"differs or missing: {args.out / name}")
        for name in stale:
            print(f"not generated: {args.out / name}")
        return 1 if differ or stale else 0
    for name, text in files.items():
        path = args.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    for name in existing - set(files):
        (args.out / name).unlink()
    print(f"{len(files)} files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
