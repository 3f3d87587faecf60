"""prepare_dataset on fixtures in each dataset's on-disk format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from fixtures import make_cars196, make_cub, make_sop, write_image
from fixtures import read_labels as read_lmdb_labels
from liftedstruct.datasets import get_source, layouts
from liftedstruct.datasets.prepare import PrepareOptions
from liftedstruct.datasets.prepare import prepare as prepare_source
from liftedstruct.errors import DatasetError, FolderLockedError, OutputError
from liftedstruct.files import file_digest, locked_folder
from liftedstruct.images import datum_image
from liftedstruct.lmdbio import read_datums
from liftedstruct.paths import REPO_ROOT

TOOLS = REPO_ROOT / "tools"
SMALL = {"lifted": 8, "contrastive": 8, "triplet": 6}


def prepare(name: str, root, out: Path, opts: PrepareOptions) -> dict:
    return prepare_source(get_source(name), root, out, opts)


def options(**overrides) -> PrepareOptions:
    settings = dict(count_check=False, batch_size=dict(SMALL), workers=2)
    settings.update(overrides)
    return PrepareOptions(**settings)


def read_all(path: Path) -> list:
    return [datum for _, datum in read_datums(path)]


def decode(datum) -> np.ndarray:
    if datum.encoded:  # as stored, to see the channels
        return cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
    return datum_image(datum)


def test_cub_splits_labels_and_images(caffe, tmp_path):
    raw = make_cub(tmp_path / "raw")
    out = tmp_path / "out"
    manifest = prepare("cub", raw, out, options())
    # Classes 1-3 train, 101-103 test, 4 images each; labels 0-based per split.
    test = read_all(out / "test_lmdb")
    assert [d.label for d in test] == [0] * 4 + [1] * 4 + [2] * 4
    for datum in test:
        image = decode(datum)
        assert datum.encoded and image.shape == (256, 256, 3)
    index = (out / "test_index.tsv").read_text().splitlines()
    assert index[0] == "key\tlabel\tpath" and len(index) == 13
    assert index[1].split("\t") == ["000000000", "0", "101.Bird_101/Bird_101_0000.jpg"]
    assert manifest["outputs"]["test_lmdb"]["classes"] == 3
    assert set(read_lmdb_labels(out / "train_lifted_lmdb")) == {0, 1, 2}
    assert manifest["source_checksums"].keys() == {"images.txt", "image_class_labels.txt"}


def test_unusual_images_become_bgr(caffe, tmp_path):
    """Grayscale JPEG, CMYK JPEG and alpha PNG (the first four train images)."""
    raw = make_cub(tmp_path / "raw", classes=(1, 101), per_class=4)
    out = tmp_path / "out"
    prepare("cub", raw, out, options(methods=("lifted",), encoding="raw"))
    datums = read_all(out / "train_lifted_lmdb")
    assert all(not d.encoded and decode(d).shape == (256, 256, 3) for d in datums)
    gray = [d for d in datums if np.array_equal(decode(d)[..., 0], decode(d)[..., 2])]
    assert gray, "the grayscale image should decode to equal B, G and R"


def test_pair_layout_in_lmdb(caffe, tmp_path):
    raw = make_cub(tmp_path / "raw", classes=(1, 2, 3, 4, 101, 102), per_class=5)
    out = tmp_path / "out"
    prepare("cub", raw, out, options(methods=("lifted", "contrastive")))
    labels = np.array(read_lmdb_labels(out / "train_lifted_lmdb"))
    similarity = np.array(read_lmdb_labels(out / "train_contrastive_lmdb"))
    half = SMALL["lifted"] // 2
    batches = labels.reshape(-1, 2, half)
    sims = similarity.reshape(-1, 2, half)
    assert np.array_equal(sims[:, 0], sims[:, 1])
    assert np.array_equal(batches[:, 0] == batches[:, 1], sims[:, 0].astype(bool))


def test_pair_order_structure():
    labels = np.repeat(np.arange(6), [3, 4, 5, 3, 6, 4])
    order, similarity = layouts.pair_order(labels, 8, seed=1)
    pairs = order.reshape(-1, 2, 4).transpose(0, 2, 1).reshape(-1, 2)
    positives = {tuple(p) for p in layouts.positive_pairs(labels)}
    found = {tuple(p) for p in pairs if labels[p[0]] == labels[p[1]]}
    total = len(positives) + len(layouts.negative_pairs(labels, np.random.default_rng(1)))
    assert len(pairs) % 4 == 0 and total - len(pairs) < 4  # only the trim is lost
    assert len(positives - found) < 4
    negatives = int((similarity == 0).sum() // 2)
    assert abs(negatives - len(found)) / len(found) < 0.25
    assert np.array_equal(similarity.reshape(-1, 2, 4)[:, 0] == 1,
                          (labels[order].reshape(-1, 2, 4)[:, 0]
                           == labels[order].reshape(-1, 2, 4)[:, 1]))
    again, _ = layouts.pair_order(labels, 8, seed=1)
    other, _ = layouts.pair_order(labels, 8, seed=2)
    assert np.array_equal(order, again) and not np.array_equal(order, other)


def test_triplet_order_structure():
    labels = np.repeat(np.arange(5), 4)
    order = layouts.triplet_order(labels, 6, seed=0)
    blocks = labels[order].reshape(-1, 3, 2)
    assert np.array_equal(blocks[:, 0], blocks[:, 1])
    assert (blocks[:, 0] != blocks[:, 2]).all()
    assert len(order) // 3 == 30  # all 5 * C(4, 2) positive pairs


def test_data_layer_reads_the_lmdb(caffe, tmp_path):
    raw = make_cub(tmp_path / "raw", classes=(1, 2, 101, 102), per_class=4)
    out = tmp_path / "out"
    prepare("cub", raw, out, options(methods=("lifted",)))
    expected = read_lmdb_labels(out / "train_lifted_lmdb")[:8]
    proto = tmp_path / "data.prototxt"
    proto.write_text(f"""
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ crop_size: 227 mirror: true mean_value: 104 mean_value: 117
                     mean_value: 123 }}
  data_param {{ source: "{out / 'train_lifted_lmdb'}" batch_size: 8 backend: LMDB }} }}
""")
    net = caffe.Net(str(proto), caffe.TRAIN)
    net.forward()
    assert net.blobs["data"].data.shape == (8, 3, 227, 227)
    assert net.blobs["label"].data.tolist() == expected


def test_cars196_and_sop_archives(caffe, tmp_path):
    cars = prepare("cars196", make_cars196(tmp_path / "cars"), tmp_path / "cars_out",
                   options(methods=("lifted",)))
    # Classes 1, 2, 97, 98 train; 99, 100, 196 test; the .mat's test flag is ignored.
    assert cars["outputs"]["test_lmdb"]["classes"] == 3
    assert cars["outputs"]["train_lifted_lmdb"]["classes"] == 4
    sop = prepare("sop", make_sop(tmp_path / "sop"), tmp_path / "sop_out",
                  options(methods=("triplet",)))
    assert sop["outputs"]["test_lmdb"]["images"] == 15
    assert sop["outputs"]["train_triplet_lmdb"]["records"] % 6 == 0


def test_archive_and_resume(caffe, tmp_path):
    tgz = make_cub(tmp_path / "raw", archive=True)
    out = tmp_path / "out"
    prepare("cub", tgz, out, options(methods=("lifted",)))
    stamp = (out / "train_lifted_lmdb" / "data.mdb").stat().st_mtime_ns
    prepare("cub", tgz, out, options(methods=("lifted",)))
    assert (out / "train_lifted_lmdb" / "data.mdb").stat().st_mtime_ns == stamp
    prepare("cub", tgz, out, options(methods=("lifted",), seed=5))  # new seed: rewrite
    assert (out / "train_lifted_lmdb" / "data.mdb").stat().st_mtime_ns != stamp
    assert not list(out.glob("*.partial"))


def test_corrupt_image_named_or_skipped(caffe, tmp_path):
    raw = make_cub(tmp_path / "raw", corrupt=True)
    with pytest.raises(DatasetError, match="Bird_1_0002.jpg: not a decodable image"):
        prepare("cub", raw, tmp_path / "out", options())
    assert not (tmp_path / "out" / "train_lifted_lmdb").exists()
    manifest = prepare("cub", raw, tmp_path / "out", options(skip_bad=True))
    assert manifest["outputs"]["train_lifted_lmdb"]["images"] == 11
    assert "Bird_1_0002.jpg" in (tmp_path / "out" / "bad_files_train.tsv").read_text()


def test_bad_inputs_name_the_file(tmp_path):
    raw = make_cub(tmp_path / "raw")
    with pytest.raises(DatasetError, match="counts differ.*train images: 12 .expected 5864"):
        prepare("cub", raw, tmp_path / "out", options(count_check=True))
    labels = raw / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text("".join(labels.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DatasetError, match="image_class_labels.txt does not match"):
        prepare("cub", raw, tmp_path / "out", options())
    (raw / "CUB_200_2011" / "images.txt").unlink()
    with pytest.raises(DatasetError, match="no images.txt"):
        prepare("cub", raw, tmp_path / "out", options())
    with pytest.raises(DatasetError, match="--root .*missing: no such file"):
        prepare("cub", tmp_path / "missing", tmp_path / "out", options())
    broken = tmp_path / "CUB_200_2011.tgz"
    broken.write_bytes(b"\x1f\x8b\x08 truncated")
    with pytest.raises(DatasetError, match="cannot extract"):
        prepare("cub", broken, tmp_path / "out2", options())


def test_cli_digits(caffe, tmp_path):
    out = tmp_path / "digits"
    result = subprocess.run(
        [sys.executable, str(TOOLS / "prepare_dataset.py"), "digits", "--out", str(out),
         "--max-pairs", "640", "--batch-size", "64", "--triplet-batch-size", "60"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["test_lmdb"]["images"] == 896
    assert manifest["outputs"]["train_lifted_lmdb"]["records"] == 1280
    assert manifest["outputs"]["train_triplet_lmdb"]["records"] == 1920
    assert "records, about" in result.stdout


def test_rerun_after_fixing_a_bad_image(caffe, tmp_path):
    """The resume key covers the images themselves: a fixed image is taken
    in on the rerun, and the old bad list goes away."""
    raw = make_cub(tmp_path / "raw", corrupt=True)
    out = tmp_path / "out"
    first = prepare("cub", raw, out, options(skip_bad=True, methods=("lifted",)))
    assert first["outputs"]["train_lifted_lmdb"]["images"] == 11
    assert (out / "bad_files_train.tsv").exists()
    test_stamp = (out / "test_lmdb" / "data.mdb").stat().st_mtime_ns
    bad = raw / "CUB_200_2011" / "images" / "001.Bird_1" / "Bird_1_0002.jpg"
    write_image(bad, 99)
    again = prepare("cub", raw, out, options(skip_bad=True, methods=("lifted",)))
    assert again["outputs"]["train_lifted_lmdb"]["images"] == 12
    assert again["outputs"]["train_lifted_lmdb"]["bad_images"] == 0
    assert not (out / "bad_files_train.tsv").exists()
    # The test split did not change: it is not rewritten.
    assert (out / "test_lmdb" / "data.mdb").stat().st_mtime_ns == test_stamp


def test_a_second_run_into_the_same_folder_is_refused(caffe, tmp_path):
    raw = make_cub(tmp_path / "raw")
    out = tmp_path / "out"
    with locked_folder(out, "test"):
        with pytest.raises(FolderLockedError, match="another prepare_dataset.py"):
            prepare("cub", raw, out, options())
    assert not (out / "manifest.json").exists()
    prepare("cub", raw, out, options(methods=("lifted",)))  # free again


def test_a_split_with_no_images_left(caffe, tmp_path):
    raw = make_cub(tmp_path / "raw", classes=(1, 2, 101), per_class=2)
    for path in (raw / "CUB_200_2011" / "images").glob("101.*/*"):
        path.write_bytes(b"broken")
    with pytest.raises(DatasetError, match="no image of the test split is left after "
                                           "skipping 2 bad"):
        prepare("cub", raw, tmp_path / "out", options(skip_bad=True))


def test_bad_options_are_refused_before_any_work(caffe, tmp_path, monkeypatch):
    raw = make_cub(tmp_path / "raw")
    from liftedstruct.datasets import prepare as prepare_module

    def no_decoding(*args, **kwargs):
        raise AssertionError("images decoded before the options were checked")

    monkeypatch.setattr(prepare_module, "process_images", no_decoding)
    for overrides, message in (
            ({"size": 0}, "--size 0"),
            ({"batch_size": {"lifted": 7, "contrastive": 8, "triplet": 6}},
             "--batch-size 7: lifted batches hold whole pairs"),
            ({"batch_size": {"lifted": 8, "contrastive": 8, "triplet": 8}},
             "--triplet-batch-size 8"),
            ({"max_pairs": -10}, "--max-pairs -10"),
            ({"methods": ("lifted", "npair")}, "unknown npair")):
        with pytest.raises(DatasetError, match=message):
            prepare("cub", raw, tmp_path / "out", options(**overrides))
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    with pytest.raises(OutputError, match="--out .*a_file/sub: .*a_file is a file"):
        prepare("cub", raw, blocker / "sub", options())


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "--batch-size: 0: must be at least 1"),
    (["--size", "0"], "--size: 0: must be at least 1"),
    (["--max-pairs", "-10"], "--max-pairs: -10: must be at least 1"),
    (["--batch-size", "7"], "--batch-size 7"),
])
def test_cli_refuses_bad_numbers(tmp_path, args, message):
    result = subprocess.run([sys.executable, str(TOOLS / "prepare_dataset.py"), "digits",
                             "--out", str(tmp_path / "out"), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def cub_tar(folder: Path, archive: Path, mtime: int = 1_600_000_000) -> Path:
    """An uncompressed CUB_200_2011.tar of folder with fixed member and
    archive times: two such archives differ only where their files do."""
    for path in folder.rglob("*"):
        os.utime(path, (mtime, mtime))
    with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT) as handle:
        handle.add(folder, arcname="CUB_200_2011")
    os.utime(archive, (mtime, mtime))
    return archive


def test_a_replaced_download_is_extracted_again(caffe, tmp_path):
    """The extraction is keyed on the archive's content: a download with one
    broken image stops the run; the complete one, saved under the same name
    (same size and time, even), is extracted and prepared."""
    raw = make_cub(tmp_path / "raw", classes=(1, 2, 101, 102), per_class=3)
    folder = raw / "CUB_200_2011"
    image = folder / "images" / "002.Bird_2" / "Bird_2_0001.jpg"
    good = image.read_bytes()
    broken = good[:20] + bytes(len(good) - 20)  # same size, pixels gone
    image.write_bytes(broken)
    (tmp_path / "dl").mkdir()
    archive = cub_tar(folder, tmp_path / "dl" / "CUB_200_2011.tar")
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="Bird_2_0001.jpg: not a decodable image"):
        prepare("cub", archive, out, options(methods=("lifted",)))
    first_size = archive.stat().st_size
    image.write_bytes(good)
    cub_tar(folder, archive)
    assert archive.stat().st_size == first_size
    manifest = prepare("cub", archive, out, options(methods=("lifted",)))
    assert manifest["outputs"]["train_lifted_lmdb"]["images"] == 6
    assert manifest["source_checksums"]["CUB_200_2011.tar"] == file_digest(archive)
    # Another image replaced by other pixels (same size and time): the
    # prepared LMDBs follow the archive, not the extracted copy's times.
    test_image = folder / "images" / "101.Bird_101" / "Bird_101_0000.jpg"
    before = [decode(d) for d in read_all(out / "test_lmdb")]
    pixels = cv2.imdecode(np.frombuffer(test_image.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    ok, encoded = cv2.imencode(".jpg", 255 - pixels)
    data = encoded.tobytes()
    size = test_image.stat().st_size
    assert ok and len(data) <= size
    test_image.write_bytes(data + bytes(size - len(data)))  # JPEG ignores the tail
    cub_tar(folder, archive)
    prepare("cub", archive, out, options(methods=("lifted",)))
    after = [decode(d) for d in read_all(out / "test_lmdb")]
    assert not np.array_equal(before[0], after[0])
    assert all(np.array_equal(b, a) for b, a in zip(before[1:], after[1:], strict=True))


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("change,message", [
    (lambda cub: (cub / "images.txt").write_text(
        "".join(lines_of(cub / "images.txt")) + "1 001.Bird_1/Bird_1_0001.jpg\n"),
     r"images.txt:13: image id 1 again \(first at .*images.txt:1\)"),
    (lambda cub: (cub / "images.txt").write_text(
        "".join(lines_of(cub / "images.txt")) + "13 001.Bird_1/Bird_1_0001.jpg\n"),
     r"images.txt:13: image path 001.Bird_1/Bird_1_0001.jpg again \(first at .*:2\)"),
    (lambda cub: (cub / "image_class_labels.txt").write_text(
        "".join(lines_of(cub / "image_class_labels.txt")[:-1]) + "1 101\n"),
     r"image_class_labels.txt:12: image id 1 again"),
    (lambda cub: (cub / "image_class_labels.txt").write_text(
        "1 Black_footed_Albatross\n" + "".join(lines_of(cub / "image_class_labels.txt")[1:])),
     r"image_class_labels.txt:1: field 2 is 'Black_footed_Albatross', not an integer"),
    (lambda cub: (cub / "images.txt").write_text(
        "one 001.Bird_1/Bird_1_0000.jpg\n" + "".join(lines_of(cub / "images.txt")[1:])),
     r"images.txt:1: field 1 is 'one', not an integer"),
    (lambda cub: (cub / "image_class_labels.txt").write_text(
        "1 201\n" + "".join(lines_of(cub / "image_class_labels.txt")[1:])),
     r"image_class_labels.txt:1: class id 201 is outside 1-200"),
    (lambda cub: (cub / "images.txt").write_text(
        "1 ../../elsewhere/bird.jpg\n" + "".join(lines_of(cub / "images.txt")[1:])),
     r"images.txt:1: image path ../../elsewhere/bird.jpg leaves the dataset's folder"),
], ids=["repeated id", "repeated path", "repeated label id", "text class", "text id",
        "class 201", "path outside"])
def test_cub_list_problems_name_file_and_line(tmp_path, change, message):
    raw = make_cub(tmp_path / "raw", classes=(1, 2, 101), per_class=4)
    change(raw / "CUB_200_2011")
    with pytest.raises(DatasetError, match=message):
        prepare("cub", raw, tmp_path / "out", options())
    assert not (tmp_path / "out" / "test_lmdb").exists()


def test_sop_list_problems_name_file_and_line(tmp_path):
    zipped = make_sop(tmp_path / "sop", archive=True)
    with zipfile.ZipFile(zipped) as handle:
        handle.extractall(tmp_path / "unzipped")
    base = tmp_path / "unzipped" / "Stanford_Online_Products"
    train, test = base / "Ebay_train.txt", base / "Ebay_test.txt"
    original = {path: path.read_text() for path in (train, test)}
    first_train = lines_of(train)[1]
    cases = [
        (test, lines_of(test)[:1] + [first_train.replace("1 1 2", "16 1 2", 1)]
         + lines_of(test)[2:], r"Ebay_test.txt:2: image_id 16 again|path .* again"),
        (train, lines_of(train) + [f"99 1 2 {first_train.split()[3]}\n"],
         r"Ebay_train.txt:17: path chair_final/1000_0.JPG again \(first at .*:2\)"),
        (train, lines_of(train)[:1] + [first_train.replace(" 1 2 ", " chair 2 ", 1)]
         + lines_of(train)[2:], r"Ebay_train.txt:2: field 2 is 'chair', not an integer"),
        (test, lines_of(test)[:1] + [lines_of(test)[1].replace(" 6 ", " 1 ", 1)]
         + lines_of(test)[2:], r"Ebay_test.txt:2: class_id 1 is also a training class"),
    ]
    for path, lines, message in cases:
        path.write_text("".join(lines))
        with pytest.raises(DatasetError, match=message):
            prepare("sop", tmp_path / "unzipped", tmp_path / "out", options())
        path.write_text(original[path])
    prepare("sop", tmp_path / "unzipped", tmp_path / "out", options(methods=("lifted",)))


def rewrite_annotations(root: Path, change) -> None:
    from scipy.io import loadmat, savemat

    mat = loadmat(root / "cars_annos.mat")
    change(mat["annotations"])
    savemat(root / "cars_annos.mat", {"annotations": mat["annotations"],
                                      "class_names": mat["class_names"]})


def test_cars196_annotation_problems(tmp_path):
    root = make_cars196(tmp_path / "cars")
    mat = root / "cars_annos.mat"
    original = mat.read_bytes()

    def repeat_path(annotations):
        annotations[0, 5]["relative_im_path"] = annotations[0, 2]["relative_im_path"]

    def text_class(annotations):
        annotations[0, 4]["class"] = np.array(["Audi"])

    def class_197(annotations):
        annotations[0, 0]["class"] = np.array([[197]])

    for change, message in (
            (repeat_path, r"annotation 6: relative_im_path car_ims/000003.jpg again "
                          r"\(first at .*annotation 3\)"),
            (text_class, r"annotation 5: class 'Audi' is not an integer"),
            (class_197, r"annotation 1: class 197 is outside 1-196")):
        rewrite_annotations(root, change)
        with pytest.raises(DatasetError, match=message):
            prepare("cars196", root, tmp_path / "out", options())
        mat.write_bytes(original)
    # What a failed download leaves under the name, and MATLAB's v7.3 format
    # (HDF5 behind a 512-byte header that starts as MATLAB writes it).
    mat.write_text("<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n")
    with pytest.raises(DatasetError, match="an HTML page, not a MATLAB file"):
        prepare("cars196", root, tmp_path / "out", options())
    header = (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 "
              b"2024 HDF5 schema 1.00 .").ljust(116) + bytes(8) + b"\x00\x02IM"
    mat.write_bytes(header.ljust(512, b"\x00") + b"\x89HDF\r\n\x1a\n" + bytes(200))
    with pytest.raises(DatasetError, match="MATLAB v7.3 .HDF5. file"):
        prepare("cars196", root, tmp_path / "out", options())
    mat.write_bytes(original)
    assert not (tmp_path / "out" / "raw-cars196").exists()  # checked before extracting
    prepare("cars196", root, tmp_path / "out", options(methods=("lifted",)))


@pytest.mark.parametrize("name,content,message", [
    ("images.txt", "1 001.Bird_1/a.jpg\n1 001.Bird_1/b.jpg\n", "image id 1 again"),
    ("cars_annos.mat", "<html>", "an HTML page"),
], ids=["cub", "cars196"])
def test_cli_dataset_problems_end_without_traceback(tmp_path, name, content, message):
    if name == "images.txt":
        root = make_cub(tmp_path / "raw", classes=(1, 101), per_class=2)
        (root / "CUB_200_2011" / name).write_text(content)
        dataset = "cub"
    else:
        root = make_cars196(tmp_path / "cars")
        (root / name).write_text(content)
        dataset = "cars196"
    result = subprocess.run([sys.executable, str(TOOLS / "prepare_dataset.py"), dataset,
                             "--root", str(root), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
