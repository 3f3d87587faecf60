"""Caffe's gtests this project builds and runs: one table, from which both the
CMake selection (BUILD_only_tests) and the gtest filter come."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GTest:
    source: str  # src/caffe/test/test_<source>.cpp
    cases: tuple[str, ...]  # gtest test-case name fragments it defines
    cudnn_only: bool = False  # built for its CuDNN* cases in cuDNN builds


GTESTS = (
    # Ours.
    GTest("lifted_struct_similarity_softmax_loss_layer", ("LiftedStructSimilaritySoftmaxLoss",)),
    GTest("triplet_loss_layer", ("TripletLoss",)),
    GTest("parallel_data_layer", ("ParallelDataLayer",)),
    # Caffe's own, for the layers and solvers the nets use.
    GTest("contrastive_loss_layer", ("ContrastiveLoss",)),
    GTest("inner_product_layer", ("InnerProduct",)),
    GTest("slice_layer", ("Slice",)),
    GTest("concat_layer", ("Concat",)),
    GTest("pooling_layer", ("Pooling",)),
    GTest("lrn_layer", ("LRN",)),
    GTest("data_transformer", ("DataTransform",)),
    GTest("data_layer", ("DataLayer",)),
    GTest("gradient_based_solver", ("SGDSolver", "AdamSolver")),
    GTest("net", ("NetTest",)),
    # With cuDNN, the tests of the layers it replaces (their CuDNN* cases).
    GTest("convolution_layer", ("Convolution",), cudnn_only=True),
    GTest("neuron_layer", ("Neuron",), cudnn_only=True),
    GTest("softmax_layer", ("Softmax",), cudnn_only=True),
)


def selected(cudnn: bool) -> list[GTest]:
    return [test for test in GTESTS if cudnn or not test.cudnn_only]


def cmake_selection(cudnn: bool) -> str:
    """BUILD_only_tests: the test sources to compile."""
    return ",".join(test.source for test in selected(cudnn))


def gtest_filter(cudnn: bool) -> str:
    """--gtest_filter for every case of the selected tests."""
    return ":".join(f"*{case}*" for test in selected(cudnn) for case in test.cases)
