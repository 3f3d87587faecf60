"""Caffe's gtests this project builds and runs: one table, from which both the
CMake selection (BUILD_only_tests) and the gtest filter come."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GTest:
    source: str  # src/caffe/test/test_<source>.cpp
    cases: tuple[str, ...]  # gtest test-case name fragments it defines
    cudnn_only: bool = False  # built for its CuDNN* cases in cuDNN builds
    cudnn_cases: bool = False  # defines CuDNN<case>* tests (GPU-only)


GTESTS = (
    # Ours.
    GTest("lifted_struct_similarity_softmax_loss_layer", ("LiftedStructSimilaritySoftmaxLoss",)),
    GTest("triplet_loss_layer", ("TripletLoss",)),
    GTest("parallel_data_layer", ("ParallelDataLayer",)),
    GTest("metric_batch_data_layer", ("MetricBatchDataLayer",)),
    GTest("batched_convolution", ("BatchedConvolution",)),
    GTest("cpu_threads", ("CpuThreads",)),
    # Caffe's own, for the layers and solvers the nets use.
    GTest("contrastive_loss_layer", ("ContrastiveLoss",)),
    GTest("inner_product_layer", ("InnerProduct",)),
    GTest("slice_layer", ("Slice",)),
    GTest("concat_layer", ("Concat",)),
    GTest("pooling_layer", ("Pooling",), cudnn_cases=True),
    GTest("lrn_layer", ("LRN",), cudnn_cases=True),
    GTest("data_transformer", ("DataTransform",)),
    GTest("data_layer", ("DataLayer",)),
    GTest("gradient_based_solver", ("SGDSolver", "AdamSolver")),
    GTest("net", ("NetTest",)),
    # With cuDNN, the tests of the layers it replaces (their CuDNN* cases).
    # Through the batched CPU path (patch 0015), and with cuDNN its CuDNN* cases.
    GTest("convolution_layer", ("Convolution",), cudnn_cases=True),
    # ReLU on OpenMP's threads (patch 0016), and with cuDNN its CuDNN* cases.
    GTest("neuron_layer", ("Neuron",), cudnn_cases=True),
    GTest("softmax_layer", ("Softmax",), cudnn_only=True, cudnn_cases=True),
)


def selected(cudnn: bool) -> list[GTest]:
    return [test for test in GTESTS if cudnn or not test.cudnn_only]


def cmake_selection(cudnn: bool) -> str:
    """BUILD_only_tests: the test sources to compile."""
    return ",".join(test.source for test in selected(cudnn))


def gtest_filter(cudnn: bool) -> str:
    """--gtest_filter for every case of the selected tests."""
    return ":".join(f"*{case}*" for test in selected(cudnn) for case in test.cases)


# Our GPU-against-CPU test of the lifted layer (test case name).
GPU_EQUALS_CPU = "LiftedStructSimilaritySoftmaxLossLayerGPUvsCPUTest"
OURS = ("lifted_struct_similarity_softmax_loss_layer", "triplet_loss_layer")


def device_filter(cudnn: bool, gpu: bool, ours_only: bool = False) -> str:
    """--gtest_filter for one device's cases: Caffe types its tests over
    TestDtypesAndDevices (/0, /1 on the CPU, /2, /3 on the GPU); the CuDNN*
    cases are GPU-only. GPU_EQUALS_CPU runs as a step of its own."""
    indices = ("2", "3") if gpu else ("0", "1")
    patterns = []
    for test in selected(cudnn):
        if ours_only and test.source not in OURS:
            continue
        for case in test.cases:
            patterns += [f"{case}*/{index}.*" for index in indices]
            if gpu and test.cudnn_cases:
                patterns.append(f"CuDNN{case}*")
    return ":".join(patterns) + f"-{GPU_EQUALS_CPU}*"
