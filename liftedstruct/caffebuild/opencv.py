"""A minimal OpenCV for the portable GPU kit: core, imgproc, imgcodecs (JPEG
and PNG only) and a highgui without any GUI backend, built as shared
libraries from Debian 12's own source package. Debian's binary OpenCV pulls
GDAL, GDCM, OpenEXR, Qt and FFmpeg (over 200 MiB of libraries) into
anything that links imgcodecs; Caffe decodes JPEG and PNG and needs none of
them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from liftedstruct.caffebuild.source import (
    BUILD_DIR,
    DebianSource,
    extract_once,
    fetch_debian_orig,
    log,
    run,
)
from liftedstruct.files import atomic_write_text

OPENCV_SOURCE = DebianSource(
    package="opencv", version="4.6.0+dfsg-12",
    orig="opencv_4.6.0+dfsg.orig.tar.xz",
    sha256="40a59ba7e5c18a43652de0a08733c9843a39bba619b1f3e26a5fac4a6f041423",
    suite="bookworm")
PREFIX = BUILD_DIR / "opencv-kit"
STAMP = ".build-stamp.json"

# Everything off but what Caffe's io.cpp and data transformer use. SSE3 as the
# baseline runs on any x86-64 GPU host; AVX2 kernels are dispatched at run
# time where the CPU has them (resize, color conversion: the data path).
CMAKE_ENTRIES = {
    "CMAKE_BUILD_TYPE": "Release",
    "BUILD_SHARED_LIBS": "ON",
    "BUILD_LIST": "core,imgproc,imgcodecs,highgui",
    "WITH_JPEG": "ON", "WITH_PNG": "ON",
    "BUILD_JPEG": "OFF", "BUILD_PNG": "OFF", "BUILD_ZLIB": "OFF",
    "WITH_TIFF": "OFF", "WITH_WEBP": "OFF", "WITH_OPENJPEG": "OFF",
    "WITH_JASPER": "OFF", "WITH_OPENEXR": "OFF", "WITH_GDAL": "OFF",
    "WITH_GDCM": "OFF", "WITH_IMGCODEC_HDR": "OFF", "WITH_IMGCODEC_SUNRASTER": "OFF",
    "WITH_IMGCODEC_PXM": "OFF", "WITH_IMGCODEC_PFM": "OFF",
    "WITH_TBB": "OFF", "WITH_OPENMP": "OFF", "WITH_PTHREADS_PF": "ON",
    "WITH_IPP": "OFF", "WITH_ITT": "OFF", "WITH_OPENCL": "OFF", "WITH_VA": "OFF",
    "WITH_VA_INTEL": "OFF", "WITH_EIGEN": "OFF", "WITH_LAPACK": "OFF",
    "WITH_PROTOBUF": "OFF", "WITH_QUIRC": "OFF", "WITH_ADE": "OFF",
    "WITH_GTK": "OFF", "WITH_QT": "OFF", "WITH_FFMPEG": "OFF",
    "WITH_GSTREAMER": "OFF", "WITH_V4L": "OFF", "WITH_1394": "OFF",
    "WITH_CUDA": "OFF",
    "BUILD_TESTS": "OFF", "BUILD_PERF_TESTS": "OFF", "BUILD_EXAMPLES": "OFF",
    "BUILD_opencv_apps": "OFF", "BUILD_DOCS": "OFF", "BUILD_JAVA": "OFF",
    "BUILD_opencv_python3": "OFF", "BUILD_opencv_python2": "OFF",
    "OPENCV_GENERATE_PKGCONFIG": "OFF",
    "CPU_BASELINE": "SSE3", "CPU_DISPATCH": "SSE4_1,AVX2",
}


def build_key() -> str:
    digest = hashlib.sha256(OPENCV_SOURCE.sha256.encode())
    digest.update(json.dumps(CMAKE_ENTRIES, sort_keys=True).encode())
    return digest.hexdigest()


def config_dir(prefix: Path = PREFIX) -> Path:
    """The folder with OpenCVConfig.cmake, for Caffe's OpenCV_DIR."""
    return prefix / "lib" / "cmake" / "opencv4"


def build_opencv(jobs: int) -> Path:
    """Build and install the minimal OpenCV into build/opencv-kit (once)."""
    key = build_key()
    stamp = PREFIX / STAMP
    try:
        recorded = json.loads(stamp.read_text()) if stamp.exists() else {}
    except (OSError, ValueError):
        recorded = {}  # a damaged record: build again
    if isinstance(recorded, dict) and recorded.get("key") == key:
        log(f"{PREFIX} is up to date (key {key[:12]})")
        return PREFIX
    tarball = fetch_debian_orig(OPENCV_SOURCE, BUILD_DIR / "download")
    extract_once(tarball, OPENCV_SOURCE.sha256, BUILD_DIR / "src-opencv")
    tree = BUILD_DIR / "src-opencv" / "opencv-4.6.0"
    work = BUILD_DIR / "opencv-kit-build"
    work.mkdir(parents=True, exist_ok=True)
    log_path = BUILD_DIR / "build-opencv-kit.log"
    log_path.write_text("")
    log(f"minimal OpenCV {OPENCV_SOURCE.version}; full output in {log_path}")
    if PREFIX.exists():
        shutil.rmtree(PREFIX)
    args = ["cmake", "-S", str(tree), "-B", str(work), "-Wno-dev",
            f"-DCMAKE_INSTALL_PREFIX={PREFIX}"]
    args += [f"-D{name}={value}" for name, value in CMAKE_ENTRIES.items()]
    run(args, log_path=log_path)
    run(["cmake", "--build", str(work), "--parallel", str(jobs)], log_path=log_path)
    run(["cmake", "--install", str(work)], log_path=log_path)
    atomic_write_text(stamp, json.dumps({"key": key, "source": OPENCV_SOURCE.orig},
                                        indent=2) + "\n")
    return PREFIX
