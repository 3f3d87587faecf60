"""Glyphs: the paper's setting in miniature, offline. Classes are characters;
the images of a class are that character in every typeface installed from
Debian's free font packages (tools/debian-packages.txt), with a small seeded
jitter. Half the characters train, the other half are unseen test classes."""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liftedstruct.datasets.base import Dataset, DatasetSource, Item
from liftedstruct.datasets.glyph_render import Jitter, render_faces_both
from liftedstruct.errors import DatasetError
from liftedstruct.files import file_digest
from liftedstruct.parallel import ordered_map
from liftedstruct.paths import REPO_ROOT

# 159 characters: the Latin letters and digits; the Greek letters whose shape
# differs from every Latin one (capital Alpha, Beta, ... and small iota, kappa,
# ... are left out); the Russian capitals that differ from Latin, small be
# (the other small Russian letters are small copies of their capitals once
# size is normalised) and the Serbian LJE, NJE; symbols that stay distinct
# after a tight crop (left out: marks told apart only by position or size,
# such as - _ . , ' ; and superscripts, and letter look-alikes such as the
# multiplication sign or micro). Greek/Cyrillic pairs such as Gamma/Ghe stay
# in: whether they coincide is decided from the renders.
LATIN = string.ascii_uppercase + string.ascii_lowercase + string.digits
GREEK = "ΓΔΘΛΞΠΣΦΨΩ" + "αβγδεζηθλμξπσςφψω"
CYRILLIC = "БГДЖЗИЙЛПФЦЧШЩЪЫЬЭЮЯ" + "б" + "ЉЊ"
SYMBOLS = '!"#$%&()*+/:<=>?@[\\]{|}~' + "¢£¤¥¦§©®¬±¶¿÷«»¼½¾" + "€†‡‰№"
CHARSET = LATIN + GREEK + CYRILLIC + SYMBOLS
FONT_ROOT = Path("/usr/share/fonts")
FONT_SUFFIXES = (".ttf", ".otf")
# Small-caps faces draw small letters as small capitals: their cmap promises
# characters whose shape it does not deliver.
SMALL_CAPS = re.compile(r"small\s*caps", re.IGNORECASE)
# Characters whose renders coincide in at least this share of the faces are one
# class (the first in CHARSET is kept); pairs that coincide in fewer faces keep
# both classes but lose both images in the faces where they coincide (I and l
# in grotesque faces).
MERGE_FRACTION = 0.5
JITTER = Jitter()
DATA_SEED = 0  # jitter and split: part of the dataset, the same for every run
# The faces the README's numbers were measured on (file, sha256, package).
REFERENCE_FONTS = REPO_ROOT / "data" / "glyphs_fonts.json"


@dataclass(frozen=True)
class Face:
    path: str
    family: str
    postscript: str


def read_face(job: tuple[str, str]) -> tuple[str, str, str] | None:
    """(family, style, PostScript name) of the font file at job's path when
    its cmap maps every character of job's chars to a glyph other than
    .notdef; None when it does not, or when it is no font FreeType would use."""
    from fontTools.ttLib import TTFont, TTLibError

    path, chars = job
    try:
        font = TTFont(path, lazy=True)
        cmap = font.getBestCmap() or {}
        names = font["name"]
        family = str(names.getDebugName(16) or names.getDebugName(1) or "")
        style = str(names.getDebugName(17) or names.getDebugName(2) or "")
        postscript = str(names.getDebugName(6) or Path(path).name)
    except (TTLibError, OSError, KeyError, AssertionError):
        return None
    if any(cmap.get(ord(c), ".notdef") == ".notdef" for c in chars):
        return None
    return family, style, postscript


def discover_faces(root: Path = FONT_ROOT, chars: str = CHARSET,
                   workers: int | None = None) -> list[Face]:
    """Font files under root whose cmap covers every character, one per
    PostScript name (the first by path), small caps left out; sorted by path.
    The files are read on `workers` processes (None: one a core)."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in FONT_SUFFIXES)
    read = ordered_map(read_face, [(str(path), chars) for path in paths], workers,
                       chunksize=8)
    faces: dict[str, Face] = {}
    for path, info in zip(paths, read, strict=True):
        if info is None or any(SMALL_CAPS.search(t) for t in info):
            continue
        family, _, postscript = info
        faces.setdefault(postscript, Face(str(path), family, postscript))
    return sorted(faces.values(), key=lambda face: face.path)


def split_classes(chars: str, seed: int = DATA_SEED) -> tuple[str, str]:
    """Class-disjoint halves of the characters, fixed by the seed."""
    ordered = sorted(chars, key=ord)
    order = np.random.default_rng(seed).permutation(len(ordered))
    half = len(ordered) // 2
    return ("".join(sorted((ordered[i] for i in order[:half]), key=ord)),
            "".join(sorted((ordered[i] for i in order[half:]), key=ord)))


def merged_classes(found: np.ndarray, chars: str) -> dict[str, str]:
    """{dropped character: the character its class is merged into} for pairs
    coinciding in at least MERGE_FRACTION of the faces (transitively)."""
    parent = list(range(len(chars)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in np.argwhere(np.triu(found.mean(axis=0) >= MERGE_FRACTION, k=1)):
        a, b = root(int(i)), root(int(j))
        parent[max(a, b)] = min(a, b)
    return {chars[i]: chars[root(i)] for i in range(len(chars)) if root(i) != i}


class Glyphs(DatasetSource):
    name = "glyphs"
    image_size = 32
    encoding = "png"
    needs_root = False
    download = "Debian's font packages (tools/setup.sh installs them)"

    def load(self, root: Path | None, work: Path) -> Dataset:
        """root: a folder of fonts to use instead of /usr/share/fonts."""
        fonts = root or FONT_ROOT
        faces = discover_faces(fonts)
        if not faces:
            raise DatasetError(f"{fonts}: no font covers the {len(CHARSET)} characters of "
                               "the glyphs set; install the font packages listed in "
                               "tools/debian-packages.txt (tools/setup.sh does)")
        # One FreeType pass a face gives its plain renders, its jittered ones
        # and which of its characters coincide.
        renders = render_faces_both([face.path for face in faces], CHARSET, JITTER,
                                    DATA_SEED, desc="glyphs faces")
        # Faces that draw nothing or .notdef for a character they map, and faces
        # whose renders repeat an earlier face's (one design under two names).
        kept, seen = [], set()
        for index, face_renders in enumerate(renders):
            if face_renders is None:
                continue
            digest = hashlib.sha256(b"".join(image.tobytes()
                                             for image in face_renders.plain)).digest()
            if digest not in seen:
                seen.add(digest)
                kept.append(index)
        faces = [faces[i] for i in kept]
        jittered = [renders[i].jittered for i in kept]
        found = np.stack([renders[i].found for i in kept])
        del renders
        merged = merged_classes(found, CHARSET)
        classes = "".join(c for c in CHARSET if c not in merged)
        index = {c: i for i, c in enumerate(CHARSET)}
        train_chars, test_chars = split_classes(classes)
        splits: dict[str, list[Item]] = {"train": [], "test": []}
        for split, chars in (("train", train_chars), ("test", test_chars)):
            for char in chars:
                others = [index[c] for c in classes if c != char]
                for f, face in enumerate(faces):
                    if found[f, index[char], others].any():
                        continue  # looks like another class in this face
                    splits[split].append(Item(
                        f"glyphs/{Path(face.path).name}/U+{ord(char):04X}", ord(char),
                        pixels=jittered[f][index[char]]))
        manifest = [{"file": Path(face.path).name, "sha256": file_digest(Path(face.path))}
                    for face in faces]
        fingerprint = hashlib.sha256(
            "".join(f"{m['file']}\t{m['sha256']}\n" for m in manifest).encode()).hexdigest()
        details = {"fonts": manifest, "fonts_sha256": fingerprint,
                   "characters": {"train": train_chars, "test": test_chars,
                                  "merged": merged}}
        checksums = {"fonts": fingerprint,
                     "charset": hashlib.sha256(CHARSET.encode()).hexdigest()}
        return Dataset(self.name, splits["train"], splits["test"], checksums, details)


def compare_fonts(fonts: list[dict], fingerprint: str,
                  reference_file: Path = REFERENCE_FONTS) -> str:
    """One line on whether a dataset's fonts are the README's set and, when
    not, which faces are missing (with their package) or extra."""
    reference = json.loads(reference_file.read_text())
    if fingerprint == reference["fonts_sha256"]:
        return (f"fonts: {len(fonts)} faces, sha256 {fingerprint[:12]}, the set the "
                "README's numbers were measured on")
    ours = {(f["file"], f["sha256"]) for f in fonts}
    missing = [f for f in reference["fonts"] if (f["file"], f["sha256"]) not in ours]
    theirs = {(f["file"], f["sha256"]) for f in reference["fonts"]}
    extra = [f["file"] for f in fonts if (f["file"], f["sha256"]) not in theirs]
    packages = sorted({f["package"] for f in missing})
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]['file']}; packages: "
                     f"{' '.join(packages)})")
    if extra:
        parts.append(f"{len(extra)} not in it (e.g. {extra[0]})")
    return (f"fonts: {len(fonts)} faces, sha256 {fingerprint[:12]}: NOT the set the README's "
            f"numbers were measured on ({len(reference['fonts'])} faces, "
            f"{reference['fonts_sha256'][:12]}; {', '.join(parts) or 'other order'}); "
            f"expect other numbers (faces: data/manifest.json; the README's: "
            f"{reference_file.name})")
