"""The ImageNet GoogLeNet weights the paper fine-tunes from, and the check
that a .caffemodel really holds weights for the layers a net needs."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from liftedstruct.errors import WeightsError
from liftedstruct.files import atomic_path, file_digest
from liftedstruct.paths import REPO_ROOT

ZOO_README = REPO_ROOT / "prototxt" / "README.md"


def zoo_front_matter(path: Path = ZOO_README) -> dict[str, str]:
    """The model-zoo front matter (`key: value` lines between two `---`) of
    the committed nets' readme: the weights' URL and SHA-1, among others."""
    lines = path.read_text().splitlines()
    if not lines or lines[0] != "---" or "---" not in lines[1:]:
        raise WeightsError(f"{path}: no front matter between '---' lines")
    body = lines[1:lines.index("---", 1)]
    return {key.strip(): value.strip() for key, _, value in
            (line.partition(":") for line in body) if key.strip()}


GOOGLENET_URL = zoo_front_matter()["caffemodel_url"]
GOOGLENET_SHA1 = zoo_front_matter()["sha1"]
DEFAULT_PATH = REPO_ROOT / "data" / "weights" / "bvlc_googlenet.caffemodel"


def verify(path: Path, sha1: str = GOOGLENET_SHA1) -> None:
    actual = file_digest(path, "sha1")
    if actual != sha1:
        raise WeightsError(f"{path}: SHA1 {actual}, expected {sha1} "
                           "(not bvlc_googlenet.caffemodel, or a truncated copy)")


def install_from(source: Path, dest: Path = DEFAULT_PATH, sha1: str = GOOGLENET_SHA1) -> Path:
    """Check a copy the user already has and put it where the tools look."""
    if not source.is_file():
        raise WeightsError(f"--from {source}: no such file")
    verify(source, sha1)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.resolve() != dest.resolve():
        with atomic_path(dest, ".partial") as tmp:
            shutil.copyfile(source, tmp)
    return dest


def download(dest: Path = DEFAULT_PATH, url: str = GOOGLENET_URL,
             sha1: str = GOOGLENET_SHA1, timeout: float = 30) -> Path:
    """Download with resume (HTTP Range into dest.partial), then verify."""
    if dest.exists():
        verify(dest, sha1)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    start = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (urllib.error.URLError, OSError) as error:
        raise WeightsError(
            f"cannot download {url} ({error}). Offline? Download bvlc_googlenet.caffemodel "
            f"elsewhere (SHA1 {sha1}) and run tools/fetch_weights.py --from PATH") from error
    with response:
        resumed = response.status == 206
        total = int(response.headers.get("Content-Length", 0)) + (start if resumed else 0)
        mode = "ab" if resumed else "wb"
        with open(partial, mode) as out, tqdm(total=total or None, initial=start if resumed
                                               else 0, unit="B", unit_scale=True,
                                               desc=dest.name) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))
    verify(partial, sha1)
    partial.replace(dest)
    return dest


def trained_layers(path: Path) -> dict[str, list[int]]:
    """Each layer of a .caffemodel that holds weights: its blobs' sizes."""
    from google.protobuf.message import DecodeError

    from liftedstruct.paths import caffe_pb2

    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise WeightsError(f"{path}: empty file, not a Caffe model")
    model = caffe_pb2().NetParameter()
    try:
        model.ParseFromString(data)
    except DecodeError as error:
        raise WeightsError(f"{path}: not a Caffe model (.caffemodel): {error}") from error
    layers = {}
    for layer in [*model.layer, *model.layers]:  # layers: the V1 format
        if layer.blobs:
            layers[layer.name] = [len(b.data) or len(b.double_data) for b in layer.blobs]
    return layers


def net_parameters(net) -> dict[str, list[int]]:
    """A pycaffe Net's learnable layers: their blobs' sizes, in net order."""
    return {name: [blob.data.size for blob in blobs] for name, blobs in net.params.items()}


def upstream_layers(net, blobs: Iterable[str]) -> set[str]:
    """The layers a pycaffe Net runs to compute the given blobs."""
    writers: dict[str, list[str]] = defaultdict(list)
    for layer, tops in net.top_names.items():
        for top in tops:
            writers[top].append(layer)
    layers: set[str] = set()
    seen: set[str] = set()
    pending = list(blobs)
    while pending:
        blob = pending.pop()
        if blob in seen:
            continue
        seen.add(blob)
        for layer in writers[blob]:
            layers.add(layer)
            pending.extend(net.bottom_names[layer])
    return layers


def check_fit(path: Path, needed: dict[str, list[int]], what: str) -> None:
    """Refuse weights that leave a needed layer at its random initialisation
    (Caffe copies by layer name and silently skips the rest) or whose blobs
    have other sizes; `needed` maps layer names to blob sizes."""
    trained = trained_layers(path)
    missing = [name for name in needed if name not in trained]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more"
                                          if len(missing) > 8 else "")
        have = ", ".join(list(trained)[:5]) or "none"
        raise WeightsError(f"{path}: no weights for {len(missing)} of the {len(needed)} "
                           f"learnable layers {what} needs ({shown}); the file has "
                           f"weights for: {have}{', ...' if len(trained) > 5 else ''}. "
                           "Wrong .caffemodel for this net?")
    wrong = [f"{name} ({trained[name]} values, the net has {sizes})"
             for name, sizes in needed.items() if trained[name] != sizes]
    if wrong:
        raise WeightsError(f"{path}: blobs of other sizes than the net's: "
                           + "; ".join(wrong[:5]))
