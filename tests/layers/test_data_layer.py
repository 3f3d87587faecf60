"""Caffe's Data layer on several threads (patch 0011) with the paper's
transform on 256x256 datums: the batches are those of one thread; the
Data -> Silence net of make_prototxt.py --data-timing runs under `caffe time`
with the thread count of CAFFE_DATA_THREADS (what the benchmark and a GPU
machine's check measure)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from liftedstruct.data_timing import time_data_layer
from liftedstruct.images import ImageFormat, process_image, synthetic_photo
from liftedstruct.lmdbio import make_datum, write_lmdb
from liftedstruct.nets.template import data_timing_net
from liftedstruct.paths import REPO_ROOT

BATCH = 8


def datum_lmdb(path: Path, encoding: str, count: int = 12) -> Path:
    """count synthetic 256x256 photos as the dataset tool writes them."""
    from liftedstruct.datasets import Item

    rng = np.random.default_rng(0)
    fmt = ImageFormat(size=256, encoding=encoding)
    records = []
    for index in range(count):
        item = Item(f"photo/{index}", index, pixels=synthetic_photo(rng, 300, 280, 10))
        payload, reason = process_image(item, fmt)
        assert reason is None
        records.append(make_datum(payload, index, fmt.size, encoding != "raw"))
    write_lmdb(path, records, count, path.name, 1 << 28)
    return path


def batches(caffe, net: Path, seed: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    caffe.set_random_seed(seed)
    model = caffe.Net(str(net), caffe.TRAIN)
    out = []
    for _ in range(count):
        model.forward()
        out.append((model.blobs["data"].data.copy(), model.blobs["label"].data.copy()))
    return out


@pytest.mark.parametrize("encoding", ["jpg", "raw"])
def test_threads_give_the_batches_of_one_thread(caffe, tmp_path, encoding):
    lmdb = datum_lmdb(tmp_path / f"{encoding}_lmdb", encoding)
    nets = {}
    for threads in (1, 3):
        nets[threads] = tmp_path / f"threads{threads}.prototxt"
        nets[threads].write_text(data_timing_net(str(lmdb), BATCH, threads))
    one = batches(caffe, nets[1], 5, 3)
    three = batches(caffe, nets[3], 5, 3)
    other_seed = batches(caffe, nets[3], 6, 3)
    for index, ((data1, labels1), (data3, labels3)) in enumerate(zip(one, three, strict=True)):
        assert data1.shape == (BATCH, 3, 227, 227)
        np.testing.assert_array_equal(data1, data3)
        # Records in order, from the start again after the 12th.
        expected = (np.arange(BATCH) + index * BATCH) % 12
        np.testing.assert_array_equal(labels1, expected)
        np.testing.assert_array_equal(labels3, expected)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(three, other_seed, strict=True))


def test_data_timing_net_under_caffe_time(caffe, tmp_path):
    lmdb = datum_lmdb(tmp_path / "jpg_lmdb", "jpg")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "make_prototxt.py"),
                             "--data-timing", str(lmdb), "--out", str(tmp_path),
                             "--batch-size", str(BATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    net = tmp_path / "data_timing.prototxt"
    assert "CAFFE_DATA_THREADS" in result.stdout
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    proto = text_format.Parse(net.read_text(), caffe_pb2.NetParameter())
    assert [layer.type for layer in proto.layer] == ["Data", "Silence"]
    data = proto.layer[0]
    assert (data.transform_param.crop_size, data.transform_param.mirror,
            list(data.transform_param.mean_value)) == (227, True, [104, 117, 123])
    assert not data.data_param.HasField("threads")  # left to CAFFE_DATA_THREADS
    for threads in (1, 2):
        rate, used = time_data_layer(net, BATCH, 3, threads)
        assert used == threads and rate > 0
    _, used = time_data_layer(net, BATCH, 2)
    assert used == min(len(os.sched_getaffinity(0)), BATCH)
