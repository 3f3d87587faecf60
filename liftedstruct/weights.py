"""The ImageNet GoogLeNet weights the paper fine-tunes from."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from liftedstruct.files import file_digest
from liftedstruct.paths import REPO_ROOT

GOOGLENET_URL = "http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel"
GOOGLENET_SHA1 = "405fc5acd08a3bb12de8ee5e23a96bec22f08204"
DEFAULT_PATH = REPO_ROOT / "data" / "weights" / "bvlc_googlenet.caffemodel"


class WeightsError(RuntimeError):
    """The weights cannot be had or are not the right file."""


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
        tmp = dest.with_name(dest.name + ".partial")
        shutil.copyfile(source, tmp)
        tmp.replace(dest)
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
