"""Building pinned BVLC Caffe with this project's layers: the source and our
overlay (source.py), the CUDA toolkit (cuda.py), CMake (cmake.py), and the
gtests we build and run (gtests.py). Standard library only: it runs before
the project's environment has anything else in it."""
