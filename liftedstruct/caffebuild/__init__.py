"""Building pinned BVLC Caffe with this project's layers, and packing it:
the source and our overlay (source.py), the CUDA toolkit (cuda.py, from
NVIDIA's wheels by wheel_toolkit.py), the kit's minimal OpenCV (opencv.py),
CMake (cmake.py), the gtests we build and run (gtests.py), and the portable
GPU kit (kit.py). Standard library only except kit.py's fixture and nets:
the build runs before the project's environment has anything else in it."""
