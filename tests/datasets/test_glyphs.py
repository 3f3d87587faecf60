"""The glyphs source: the installed fonts, rendering, merged look-alikes, the
class-disjoint split, the fonts manifest, and a short run of the main job."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from liftedstruct.datasets import get_source
from liftedstruct.datasets.glyph_render import (
    GLOBAL_THRESHOLD,
    Jitter,
    coincidences,
    globally_close,
    render_faces,
    render_faces_both,
)
from liftedstruct.datasets.glyphs import (
    CHARSET,
    FONT_ROOT,
    REFERENCE_FONTS,
    compare_fonts,
    discover_faces,
    split_classes,
)
from liftedstruct.errors import DatasetError
from liftedstruct.files import file_digest
from liftedstruct.paths import REPO_ROOT

FONTS = ["truetype/dejavu/DejaVuSans.ttf", "truetype/dejavu/DejaVuSerif.ttf",
         "truetype/freefont/FreeMono.ttf", "truetype/freefont/FreeSerifBold.ttf",
         "truetype/liberation/LiberationSans-Regular.ttf",
         "truetype/liberation/LiberationSerif-Italic.ttf"]


@pytest.fixture(scope="module")
def fonts(tmp_path_factory) -> Path:
    """A few of the installed faces in a folder of their own."""
    folder = tmp_path_factory.mktemp("fonts")
    for name in FONTS:
        source = FONT_ROOT / name
        assert source.is_file(), f"{source}: tools/setup.sh installs the font packages"
        shutil.copy(source, folder / source.name)
    return folder


def test_charset_and_installed_faces():
    assert len(CHARSET) == 159 and len(set(CHARSET)) == 159
    faces = discover_faces()
    # tools/debian-packages.txt's fonts: 186 files cover the set, of which
    # two are small caps and four carry a PostScript name seen already.
    assert len(faces) >= 150, len(faces)
    assert not any("mallcaps" in face.path.replace("S", "s") for face in faces)


def test_renders_are_tight_centred_and_seeded(fonts):
    path = str(fonts / "DejaVuSans.ttf")
    plain, = render_faces([path], "OI", workers=1)
    for image in plain:
        assert image.shape == (32, 32) and image.dtype == np.uint8
        ink = np.argwhere(image < 128)
        # The long side spans 32 - 2 * 4 pixels, centred.
        extent = ink.max(axis=0) - ink.min(axis=0) + 1
        assert 22 <= extent.max() <= 25, extent
        assert abs(ink.mean(axis=0) - 15.5).max() < 2.5
    one = render_faces([path], "OI", Jitter(), seed=0, workers=1)[0]
    again = render_faces([path], "IO", Jitter(), seed=0, workers=1)[0][::-1]
    other = render_faces([path], "OI", Jitter(), seed=1, workers=1)[0]
    for a, b, c, p in zip(one, again, other, plain, strict=True):
        np.testing.assert_array_equal(a, b)  # per character and face, not per order
        assert not np.array_equal(a, c) and not np.array_equal(a, p)
        assert np.abs(a.astype(int) - p.astype(int)).mean() < 40  # mild


def test_look_alikes_coincide():
    """Greek Gamma and Cyrillic Ghe are the same shape; O and Theta are not."""
    paths = [face.path for face in discover_faces()][:12]
    images = np.stack([np.stack(r) for r in render_faces(paths, "ΓГOΘ")])
    found = coincidences(images)
    assert found[:, 0, 1].mean() >= 0.5
    assert found[:, 2, 3].mean() < 0.5


def test_one_pass_renders_are_the_separate_renders_on_any_processes(fonts):
    """render_faces_both: render_faces' plain and jittered images and the
    plain ones' coincidences, in the faces' order, on one process or two."""
    paths = sorted(str(path) for path in fonts.iterdir())
    plain = render_faces(paths, CHARSET, workers=1)
    jittered = render_faces(paths, CHARSET, Jitter(), seed=3, workers=1)
    assert all(images is not None for images in plain)
    found = coincidences(np.stack([np.stack(images) for images in plain]))
    for workers in (1, 2):
        both = render_faces_both(paths, CHARSET, Jitter(), seed=3, workers=workers)
        assert len(both) == len(paths)
        for face, renders in enumerate(both):
            assert renders is not None
            np.testing.assert_array_equal(np.stack(renders.plain), np.stack(plain[face]))
            np.testing.assert_array_equal(np.stack(renders.jittered),
                                          np.stack(jittered[face]))
            np.testing.assert_array_equal(renders.found, found[face])


def test_close_pairs_are_those_of_every_pairs_full_l1(fonts):
    """The block-sum bound only saves work: the same pairs as the full L1 of
    every pair of characters (look-alikes such as I, l, 1 among them)."""
    paths = sorted(str(path) for path in fonts.iterdir())
    close_in_all = 0
    for images in render_faces(paths, CHARSET, workers=1):
        images = np.stack(images)
        ink = 255.0 - images.reshape(len(CHARSET), -1).astype(np.float64)
        mass = ink.sum(axis=1)
        relative = cdist(ink, ink, "cityblock") / (mass[:, None] + mass[None, :])
        expected = [(int(i), int(j)) for i, j in
                    np.argwhere(np.triu(relative < GLOBAL_THRESHOLD, k=1))]
        assert globally_close(images) == expected
        close_in_all += len(expected)
    assert close_in_all >= len(paths)  # Gamma and Ghe at least


def test_discovery_on_several_processes_is_the_serial_one(fonts, tmp_path):
    """The same faces in the same order on one process or two, an unreadable
    file and a face that does not cover the set left out on both."""
    folder = tmp_path / "fonts"
    shutil.copytree(fonts, folder)
    (folder / "broken.ttf").write_bytes(b"not a font")
    from fontTools import subset
    from fontTools.ttLib import TTFont

    font = TTFont(str(folder / "DejaVuSans.ttf"))
    subsetter = subset.Subsetter()
    subsetter.populate(text="AB")
    subsetter.subset(font)
    font.save(str(folder / "AB.ttf"))
    serial = discover_faces(folder, workers=1)
    assert [Path(face.path).name for face in serial] == sorted(Path(name).name
                                                               for name in FONTS)
    assert discover_faces(folder, workers=2) == serial


def test_split_is_class_disjoint_and_fixed():
    train, test = split_classes(CHARSET)
    assert not set(train) & set(test) and len(train) + len(test) == len(CHARSET)
    assert split_classes(CHARSET) == (train, test)
    assert split_classes(CHARSET, seed=1) != (train, test)


def test_load_records_the_fonts(fonts, tmp_path):
    dataset = get_source("glyphs").load(fonts, tmp_path)
    train = {item.label for item in dataset.train}
    test = {item.label for item in dataset.test}
    assert not train & test and abs(len(train) - len(test)) <= 1
    merged = dataset.details["characters"]["merged"]
    assert merged.get("Г") == "Γ" and ord("Г") not in train | test
    per_class = np.bincount([item.label for item in dataset.test])
    assert per_class.max() <= len(FONTS)
    assert {(f["file"], f["sha256"]) for f in dataset.details["fonts"]} == {
        (Path(name).name, file_digest(FONT_ROOT / name)) for name in FONTS}
    again = get_source("glyphs").load(fonts, tmp_path)
    assert dataset.fingerprint("test") == again.fingerprint("test")


def test_fonts_that_do_not_cover_the_set(tmp_path):
    from fontTools import subset
    from fontTools.ttLib import TTFont

    # A face of the listed packages cut down to two of the 159 characters.
    font = TTFont(str(FONT_ROOT / FONTS[0]))
    subsetter = subset.Subsetter()
    subsetter.populate(text="AB")
    subsetter.subset(font)
    (tmp_path / "fonts").mkdir()
    font.save(str(tmp_path / "fonts" / "AB.ttf"))
    assert discover_faces(tmp_path / "fonts", "AB")  # still a font, just not enough
    with pytest.raises(DatasetError, match="no font covers the 159 characters.*"
                                           "debian-packages.txt"):
        get_source("glyphs").load(tmp_path / "fonts", tmp_path)


def test_reference_fonts_come_from_the_listed_packages():
    """The README's numbers' faces: consistent with their fingerprint, each from
    a package tools/setup.sh installs, and installed here (a package missing
    from the list once made every fresh machine's set differ)."""
    reference = json.loads(REFERENCE_FONTS.read_text())
    fonts = reference["fonts"]
    assert hashlib.sha256("".join(f"{f['file']}\t{f['sha256']}\n" for f in fonts)
                          .encode()).hexdigest() == reference["fonts_sha256"]
    listed = {line.strip() for line in
              (REPO_ROOT / "tools" / "debian-packages.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert {f["package"] for f in fonts} <= listed
    installed = {p.name for p in FONT_ROOT.rglob("*") if p.suffix in (".ttf", ".otf")}
    absent = [(f["file"], f["package"]) for f in fonts if f["file"] not in installed]
    assert not absent, f"run tools/setup.sh: {absent[:5]}"


def test_compare_fonts_names_what_differs():
    reference = json.loads(REFERENCE_FONTS.read_text())
    fonts = [{"file": f["file"], "sha256": f["sha256"]} for f in reference["fonts"]]
    same = compare_fonts(fonts, reference["fonts_sha256"])
    assert "the set the README's numbers were measured on" in same and "NOT" not in same
    dejavu = [f for f in fonts if f["file"] == "DejaVuSans-Oblique.ttf"]
    other = [f for f in fonts if f not in dejavu] + [{"file": "Mine.ttf", "sha256": "0" * 64}]
    note = compare_fonts(other, "f" * 64)
    assert "NOT the set" in note and "1 missing (e.g. DejaVuSans-Oblique.ttf" in note
    assert "packages: fonts-dejavu-extra)" in note and "1 not in it (e.g. Mine.ttf)" in note


@pytest.mark.slow
def test_short_glyphs_run_says_its_fonts_differ(caffe, fonts, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "reproduce.py"), "--root", str(fonts),
         "--out", str(out), "--iterations", "30", "--max-pairs", "3000"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NOT the set the README's numbers were measured on" in result.stdout
    assert "NOT the set" in (out / "report" / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"lifted", "contrastive", "triplet", "raw"}
    assert results["raw"]["classes"] == len(json.loads(
        (out / "data" / "manifest.json").read_text())["characters"]["test"])
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["encoding"] == "png" and manifest["image_size"] == 32
