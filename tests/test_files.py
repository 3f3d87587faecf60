"""The file primitives: a folder written under a temporary name, then
renamed; a folder made once per key, kept by a stamp file."""

from __future__ import annotations

import json

import pytest

from liftedstruct.files import atomic_folder, make_once, stamp_matches


def test_atomic_folder_replaces_dest_only_when_the_block_ends(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old").write_text("old")
    with atomic_folder(dest) as tmp:
        (tmp / "new").write_text("new")
        assert (dest / "old").exists()
    assert sorted(p.name for p in dest.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_folder_leaves_nothing_when_the_block_raises(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_folder(dest) as tmp:
        (tmp / "half").write_text("half")
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_make_once_per_key(tmp_path):
    dest, calls = tmp_path / "made", []

    def make(folder):
        calls.append(folder.name)
        (folder / "data").write_text(str(len(calls)))

    assert make_once(dest, ".stamp", {"n": 1}, make)
    assert not make_once(dest, ".stamp", {"n": 1}, make)
    assert json.loads((dest / ".stamp").read_text()) == {"n": 1}
    assert make_once(dest, ".stamp", {"n": 2}, make)
    assert calls == ["made.partial", "made.partial"]
    assert (dest / "data").read_text() == "2"
    assert make_once(dest, ".from", "abc", make) and stamp_matches(dest, ".from", "abc")
    assert (dest / ".from").read_text() == "abc" and not (dest / ".stamp").exists()
